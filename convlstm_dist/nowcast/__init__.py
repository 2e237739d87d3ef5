"""Using a trained model: forecasts from physical frames and skill against baselines.

* :class:`Nowcaster` (:mod:`.nowcaster`) — load a checkpoint or MLflow model (safely: tensors and
  plain data only) and forecast mm/h from frames of any grid size.
* :func:`run_evaluation` / :func:`select_windows` (:mod:`.evaluation`) — the model, persistence and
  optical flow on exactly the same windows of an archive, spread over Ray tasks, merged skill.
"""

from convlstm_dist.nowcast.evaluation import run_evaluation, select_windows
from convlstm_dist.nowcast.nowcaster import Nowcaster, pad_to_patch

__all__ = ["Nowcaster", "pad_to_patch", "run_evaluation", "select_windows"]
