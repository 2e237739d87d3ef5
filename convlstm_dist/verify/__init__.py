"""Verification: mergeable skill scores, reference baselines, skill tables and the paper's Table 1.

Importing this package loads none of its modules; each public name is imported on first use.

* :class:`SkillAccumulator` — CSI/POD/FAR/HSS per lead and threshold, MSE/MAE/B-MSE/corr per
  lead, as init / accumulate / merge / compute (see :mod:`.scores`), on numpy or on a torch device:
  the one accumulator of ``evaluate`` and of validation during training; :func:`metric_key`, the one
  naming rule of logged scores, and :func:`skill_metrics` / :func:`skill_metric_names`, the lead-pooled scores.
* :func:`get_baseline` / :func:`run_baseline` — ``persistence``, ``optical_flow``
  (pysteps Lucas–Kanade + semi-Lagrangian), ``sprog`` and ``anvil`` (pysteps' cascade nowcasts on
  the same motion), see :mod:`.baselines`; :class:`FSSAccumulator`, the mergeable Fractions Skill
  Score (:mod:`.fss`); :func:`probability_match`
  (:mod:`.postprocess`).
* :func:`label_rows`, :func:`format_table`, :func:`write_csv`, :func:`plot_skill` (:mod:`.table`).
* :func:`forecast_figure`, :func:`forecast_gif`, :func:`colour_scale` (:mod:`.figures`) — forecast maps
  in pysteps' precipitation colours: inputs, observed, model and optical flow per lead in minutes.
* the held-out-event protocol of ``convlstm-dist skill-report``: :func:`run_protocol`,
  :func:`events_from_config`, :func:`format_summary` (:mod:`.heldout`).
* Table 1 of the paper (Moving MNIST): :data:`PAPER_TABLE1` and :func:`table1_report_from_runs`
  (:mod:`.table1_from_runs`, ``convlstm-dist table1-report``); :func:`run_table1_on_device`
  with :class:`Table1Options` (:mod:`.table1_on_device`, ``convlstm-dist table1``).
"""

from convlstm_dist.lazy import lazy_exports

_PUBLIC = {
    "baselines": ["DEFAULT_BASELINES", "available_baselines", "get_baseline", "run_baseline", "usable_baselines"],
    "fss": ["FSSAccumulator", "FSS_SCALES_KM", "FSS_THRESHOLDS_MMH", "fss_key"],
    "figures": ["build_forecast_figure", "colour_scale", "flow_row", "forecast_figure", "forecast_gif"],
    "heldout": ["events_from_config", "format_summary", "run_protocol"],
    "postprocess": ["probability_match"],
    "scores": ["DEFAULT_THRESHOLDS_MMH", "SkillAccumulator", "bmse_weights", "metric_key", "skill_metric_names",
               "skill_metrics"],
    "table": ["CSV_COLUMNS", "format_table", "label_rows", "plot_skill", "write_csv"],
    "table1_from_runs": ["PAPER_TABLE1", "table1_report_from_runs"],
    "table1_on_device": ["Table1Options", "run_table1_on_device"],
}
__all__ = [name for names in _PUBLIC.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
