"""Using a trained model: forecasts from physical frames and skill against baselines.

Importing this package loads none of its modules; each public name is imported on first use.

* :class:`Nowcaster` (:mod:`.nowcaster`) — load a checkpoint or MLflow model (safely: tensors and
  plain data only) and forecast mm/h from frames of any grid size; :func:`write_forecast_zarr`
  writes a forecast; :func:`nowcast_figures` (:mod:`.figures`) draws it (``verify.figures``).
* :func:`run_evaluation` / :func:`select_windows` (:mod:`.evaluation`) — the model, persistence and
  optical flow on exactly the same windows of an archive, spread over Ray tasks, merged skill;
  :func:`parse_crop`, :func:`parse_time` read the ``HxW`` and time options; :func:`metrics_from_rows`.
* :func:`evaluate_on_archive` / :func:`log_evaluation` and :func:`nowcast_from_archive` (:mod:`.run`) —
  the jobs of ``convlstm-dist evaluate`` and ``convlstm-dist nowcast``.
"""

from convlstm_dist.lazy import lazy_exports

_PUBLIC = {
    "evaluation": ["metrics_from_rows", "parse_crop", "parse_time", "run_evaluation", "select_windows"],
    "figures": ["nowcast_figures"],
    "nowcaster": ["Nowcaster", "pad_to_patch", "write_forecast_zarr"],
    "run": ["Evaluation", "Forecast", "evaluate_on_archive", "evaluation_tracking_uri", "log_evaluation",
            "nowcast_from_archive", "trained_on"],
}
__all__ = [name for names in _PUBLIC.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
