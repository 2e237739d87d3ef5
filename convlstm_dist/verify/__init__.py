"""Verification: mergeable skill scores, reference baselines and skill tables.

* :class:`SkillAccumulator` — CSI/POD/FAR/HSS per lead and threshold, MSE/MAE/B-MSE/corr per
  lead, as init / accumulate / merge / compute (see :mod:`.scores`).
* :func:`get_baseline` / :func:`run_baseline` — ``persistence`` and ``optical_flow``
  (pysteps Lucas–Kanade + semi-Lagrangian), see :mod:`.baselines`.
* :func:`label_rows`, :func:`format_table`, :func:`write_csv`, :func:`plot_skill` (:mod:`.table`).
"""

from convlstm_dist.verify.baselines import available_baselines, get_baseline, run_baseline
from convlstm_dist.verify.scores import DEFAULT_THRESHOLDS_MMH, SkillAccumulator, bmse_weights
from convlstm_dist.verify.table import format_table, label_rows, plot_skill, write_csv

__all__ = [
    "DEFAULT_THRESHOLDS_MMH",
    "SkillAccumulator",
    "available_baselines",
    "bmse_weights",
    "format_table",
    "get_baseline",
    "label_rows",
    "plot_skill",
    "run_baseline",
    "write_csv",
]
