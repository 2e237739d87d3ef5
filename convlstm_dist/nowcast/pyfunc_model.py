"""The ``python_function`` flavour of a convlstm-dist model, logged as MLflow *models from code*.

:meth:`Tracker.log_model <convlstm_dist.tracking.mlflow_tracker.Tracker.log_model>` hands this file
(by its path, :data:`convlstm_dist.tracking.mlflow_tracker.PYFUNC_MODEL_FILE`) to ``mlflow.pyfunc`` as ``python_model``: MLflow copies the file into the model and runs it when the
model is loaded, so nothing is pickled. The model's artifacts are ``checkpoint.pt`` (the slim
checkpoint: state dict, resolved config and quantity, read with ``weights_only=True``) and
``recipe.yaml`` (the same config, for people). The ``convlstm_dist`` package itself travels in the
model's ``code/`` folder, so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work where
convlstm-dist is not installed (it is not on PyPI).

Input: the last ``in_len`` frames in mm/h (``intensity`` for Moving MNIST models), a float32 array
``(frames, H, W)``, NaN = no data. Param ``leads``: the number of forecast steps (default: the
trained ``out_len``). Output: ``(leads, H, W)`` float32 in mm/h.
"""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import numpy as np

from convlstm_dist.nowcast import Nowcaster
from convlstm_dist.vocabulary import LEADS_PARAM


class ConvLSTMForecaster(mlflow.pyfunc.PythonModel):
    """A :class:`~convlstm_dist.nowcast.Nowcaster` behind MLflow's ``predict``."""

    def load_context(self, context):
        from convlstm_dist.checkpoint import load_model

        path = context.artifacts["checkpoint"]
        model, cfg, payload = load_model(path, "cpu")
        self.nowcaster = Nowcaster(model, cfg, payload["quantity"], f"MLflow pyfunc model ({path})", "cpu",
                                   {"kind": "pyfunc"})

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        nc = self.nowcaster
        frames = np.asarray(model_input, dtype=np.float32)
        if frames.ndim != 3 or frames.shape[0] != nc.in_len:
            raise ValueError(f"input must be the last {nc.in_len} frames as a (frames, H, W) array, "
                             f"got shape {frames.shape}")
        leads = int((params or {}).get(LEADS_PARAM) or nc.out_len)
        variable = nc.quantity_spec.physical_variable
        return nc.predict(frames, n_out=leads, variable=variable)


mlflow.models.set_model(ConvLSTMForecaster())
