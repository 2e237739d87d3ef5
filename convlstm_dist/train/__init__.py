"""Training: one loop (:mod:`.fit`), two backends — Ray Train workers (:mod:`.ray_worker`, driven by
:func:`run_training` in :mod:`.driver`) and one process (:func:`train_local`, :mod:`.local`).
The only package that imports ``ray.train``.

Importing this package loads none of its modules (no torch, no Ray): each public name is imported
on first use. The step itself (eager, compiled or one CUDA graph) is :class:`StepEngine`
(:mod:`.engine`); optimizer and loss of a recipe :mod:`.optim`; the data version a run is pinned
to :mod:`.data_pin`; the checks that turn late failures into one message :mod:`.guards`; metric
names :mod:`.metrics`.
"""

from convlstm_dist.lazy import lazy_exports

_PUBLIC = {
    "data_pin": ["log_pin", "pin_run"],
    "driver": ["TrainOutcome", "build_trainer", "init_ray", "preflight", "resolve", "run_training"],
    "engine": ["StepEngine", "choose_engine", "describe_engine"],
    "guards": ["check_cluster_resources"],
    "local": ["LocalOutcome", "train_local"],
    "metrics": ["check_metric"],
    "optim": ["make_optimizer", "training_loss"],
}
__all__ = [name for names in _PUBLIC.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
