"""Experiments: what trains models and scores them, above ``train/`` and ``nowcast/``.

Importing this package loads none of its modules; each public name is imported on first use.

* the held-out-event protocol of ``convlstm-dist skill-report``: :func:`run_protocol` and
  :func:`format_summary` (:mod:`.skill_report`), over the events and folds of :mod:`.heldout`
  (:func:`events_from_config`);
* Table 1 of the paper (Moving MNIST): all six models on one device in one budget,
  :func:`run_table1_on_device` with :class:`Table1Options` (:mod:`.table1_device`, ``convlstm-dist
  table1``), and the one report of both ways to the table, :data:`PAPER_TABLE1` and
  :func:`table1_report_from_runs` (:mod:`.table1_report`, ``convlstm-dist table1-report``).

Its recipes are package data (``convlstm_dist/recipes/moving_mnist/``); nothing here reads outside the
installed package unless a path is passed in.
"""

from convlstm_dist.lazy import lazy_exports

_PUBLIC = {
    "heldout": ["events_from_config"],
    "skill_report": ["format_summary", "run_protocol"],
    "table1_device": ["Table1Options", "run_table1_on_device"],
    "table1_report": ["PAPER_TABLE1", "table1_report_from_runs"],
}
__all__ = [name for names in _PUBLIC.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
