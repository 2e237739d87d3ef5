"""Using a trained model: forecasts from physical frames and skill against baselines.

Importing this package loads none of its modules; each public name is imported on first use.

* :class:`Nowcaster` (:mod:`.nowcaster`) — load a checkpoint or MLflow model (safely: tensors and
  plain data only) and forecast mm/h from frames of any grid size (NaN where there is no observed
  source); :func:`case_figure` (:mod:`.figures`) draws an evaluated window (``verify.figures``).
* :func:`forecast_dataset` / :func:`write_dataset` (:mod:`.cf`) — forecasts as CF-1.8 Zarr or NetCDF,
  local or ``s3://``.
* :func:`run_evaluation` / :func:`select_windows` (:mod:`.evaluation`) — the model, persistence and
  optical flow on exactly the same windows of an archive, spread over Ray tasks, merged skill;
  :func:`parse_crop`, :func:`parse_time` read the ``HxW`` and time options; :func:`metrics_from_rows`.
* :func:`evaluate_on_archive` / :func:`log_evaluation`, :func:`nowcast_from_archive` and
  :func:`nowcast_from_files` (:mod:`.run`) — the jobs of ``convlstm-dist evaluate`` and ``nowcast``.
* :func:`run_hindcast` (:mod:`.hindcast`) — every forecast of a period on Ray Data actors, streamed
  into one resumable CF Zarr (``convlstm-dist hindcast``).
"""

from convlstm_dist.lazy import lazy_exports

_PUBLIC = {
    "cf": ["FORMATS", "cf_skeleton", "forecast_dataset", "pick_format", "write_dataset"],
    "hindcast": ["Hindcast", "run_hindcast"],
    "evaluation": ["metrics_from_rows", "parse_crop", "parse_time", "run_evaluation", "select_windows"],
    "figures": ["case_figure", "observed_after"],
    "nowcaster": ["Nowcaster", "pad_to_patch"],
    "run": ["Evaluation", "Forecast", "evaluate_on_archive", "evaluation_tracking_uri", "forecast_paths",
            "log_evaluation", "nowcast_from_archive", "nowcast_from_files", "open_archive_at", "trained_on"],
}
__all__ = [name for names in _PUBLIC.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
