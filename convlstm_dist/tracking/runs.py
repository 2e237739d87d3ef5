"""Runs around a job: ending a run that failed, and the one finished run of a one-off job.

* :func:`ended_on_failure` — ``train`` and ``train --local`` never leave an MLflow run RUNNING;
* :func:`log_stamped_run` — ``evaluate`` and ``skill-report`` log one stamped run each.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from convlstm_dist.tracking.mlflow_tracker import Tracker


@contextmanager
def ended_on_failure(tracker: Tracker | None):
    """An exception in the block ends ``tracker``'s run KILLED (Ctrl-C) or FAILED, never leaving it
    RUNNING, and goes on; an absent tracking server is not waited for (its retries would hold the
    exit), and an error while ending never hides the original one. ``tracker`` None: nothing to end."""
    try:
        yield tracker
    except BaseException as exc:
        if tracker is not None and tracker.reachable():
            try:
                tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        raise


def log_stamped_run(uri: str, experiment: str, run_prefix: str, *, tags: dict | None = None,
                    params: dict | None = None, metrics: Iterable[tuple[str, float, int]] = (),
                    texts: dict[str, str] | None = None, files: Iterable[str | Path] = ()) -> str:
    """One finished MLflow run of a one-off job (``evaluate``, ``skill-report``): a new run
    ``<run_prefix>-<UTC time>-<ns>`` in ``experiment`` with ``tags``, ``params``, ``metrics``
    (``(key, value, step)``, one ``log_metrics`` call per step), ``texts`` (artifact name -> text)
    and ``files`` as artifacts. Returns the run id."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    tracker, _ = Tracker.start_or_resume(uri, experiment, f"{run_prefix}-{stamp}-{time.time_ns() % 10**6}", tags)
    if params:
        tracker.log_params(params)
    by_step: dict[int, dict] = {}
    for key, value, step in metrics:
        by_step.setdefault(step, {})[key] = value
    for step, values in sorted(by_step.items()):
        tracker.log_metrics(values, step)
    for name, text in (texts or {}).items():
        tracker.log_text(text, name)
    for f in files:
        tracker.log_artifact(f)
    tracker.end()
    return tracker.run_id
