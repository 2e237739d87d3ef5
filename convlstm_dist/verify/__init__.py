"""Verification: mergeable skill scores, reference baselines, skill tables and forecast figures.

Importing this package loads none of its modules; each public name is imported on first use. It
imports nothing above ``data/`` (the experiments that train and score are in ``experiments/``).

* :class:`SkillAccumulator` — CSI/POD/FAR/HSS per lead and threshold, MSE/MAE/B-MSE/corr per
  lead, as init / accumulate / merge / compute (see :mod:`.scores`), on numpy or on a torch device:
  the one accumulator of ``evaluate`` and of validation during training; :func:`skill_metrics`, the
  lead-pooled scores (named by :func:`convlstm_dist.vocabulary.metric_key`).
* :func:`get_baseline` / :func:`run_baseline` — ``persistence``, ``optical_flow``
  (pysteps Lucas–Kanade + semi-Lagrangian), ``sprog`` and ``anvil`` (pysteps' cascade nowcasts on
  the same motion), see :mod:`.baselines`; :class:`FSSAccumulator`, the mergeable Fractions Skill
  Score (:mod:`.fss`); :func:`probability_match` (:mod:`.postprocess`).
* :func:`label_rows`, :func:`format_table`, :func:`write_csv`, :func:`plot_skill` (:mod:`.table`);
  :func:`pool_rows`, :func:`markdown_table`, :func:`fss_markdown_table` (:mod:`.pooled`): scores
  of contingency tables and FSS sums pooled over events.
* :func:`forecast_figure`, :func:`forecast_gif`, :func:`colour_scale` (:mod:`.figures`) — forecast maps
  in pysteps' precipitation colours: inputs, observed, model and optical flow per lead in minutes.
"""

from convlstm_dist.lazy import lazy_exports

_PUBLIC = {
    "baselines": ["DEFAULT_BASELINES", "MOTION_BASELINES", "available_baselines", "get_baseline", "motion_field",
                  "run_baseline", "usable_baselines"],
    "fss": ["FSSAccumulator", "fss_key"],
    "figures": ["build_forecast_figure", "colour_scale", "flow_row", "forecast_figure", "forecast_gif"],
    "pooled": ["EVENT_COLUMNS", "POOLED_COLUMNS", "fss_markdown_table", "markdown_table", "pool_rows"],
    "postprocess": ["probability_match"],
    "scores": ["SkillAccumulator", "skill_metrics"],
    "table": ["CSV_COLUMNS", "format_table", "label_rows", "plot_skill", "write_csv"],
}
__all__ = [name for names in _PUBLIC.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
