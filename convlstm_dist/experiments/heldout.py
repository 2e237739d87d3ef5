"""Held-out-event skill protocol: the events and folds (train on some radar events, score on the others).

An *event* is one archive (one entry of a recipe's ``data.archives``). :func:`plan_folds` splits
the events into folds: leave-one-out over all events by default, or one fold whose scored events
are an explicit ``holdout`` list. For every fold:

1. :func:`fold_config` builds the training recipe: the base recipe with ``data.archives`` replaced
   by the fold's training events (each keeps its base entry: weight, per-archive split) and its own
   ``run.name`` (so folds never resume each other's checkpoints);
2. :mod:`.skill_report` trains it under a time budget and scores every held-out event on *all* of
   its gap-free windows, with the model and the baselines on the same windows.

The guarantee — a scored event is never an event its model trained on (train *or* validation
windows) — is checked three times: when the folds are planned (:func:`check_fold`), on the fold's
recipe, and on the trained model's own recipe before scoring (:func:`check_model_events`); a
violation raises :class:`HeldoutLeakError`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from convlstm_dist.config import config_from_dict
from convlstm_dist.data.storage import archive_key
from convlstm_dist.data.storage import archive_name as event_name  # noqa: F401 - the protocol's event names
from convlstm_dist.errors import UserError

class HeldoutLeakError(UserError):
    """A scored event is also a training event of the same fold."""


@dataclass(frozen=True)
class Event:
    name: str
    url: str
    entry: dict = field(default_factory=dict, compare=False, hash=False)  # the base recipe's data.archives entry


@dataclass
class Fold:
    index: int
    train: list[Event]
    scored: list[Event]

    @property
    def label(self) -> str:
        return f"fold {self.index}: trained on {roles(self.train)}; scored on {names(self.scored)}"


def roles(events: Sequence[Event]) -> str:
    """Training events, each with its role when it is not plain training (``whole: val`` = model selection)."""
    def one(e: Event) -> str:
        whole = (e.entry.get("split") or {}).get("whole")
        return e.name + (f" (whole {whole} split)" if whole in ("val", "test") else "")
    return ", ".join(one(e) for e in events) or "-"


def names(events: Sequence[Event]) -> str:
    return ", ".join(e.name for e in events) or "-"


def events_from_config(cfg, urls: Sequence[str] | None = None) -> list[Event]:
    """The events of the protocol: ``urls`` if given (their base entry when the recipe lists them),
    else every archive of the recipe's ``data.archives`` (or its single ``data.archive``)."""
    entries = {}
    if cfg.data.archives:
        entries = {e.url: e.model_dump(exclude_none=True) for e in cfg.data.archives}
    if not urls:
        urls = list(entries) or ([cfg.data.archive] if cfg.data.archive else [])
    if not urls:
        raise UserError("no events: the recipe has no data.archives (pass --events URL ...)")
    events = [Event(event_name(u), u, entries.get(u, {"url": u})) for u in urls]
    seen: dict[str, str] = {}
    for e in events:
        if e.name in seen:
            raise UserError(f"two events are both named {e.name!r} ({seen[e.name]}, {e.url}); rename an archive")
        seen[e.name] = e.url
    return events


def _find(events: Sequence[Event], ref: str) -> Event:
    for e in events:
        if ref in (e.name, e.url) or event_name(ref) == e.name:
            return e
    raise UserError(f"--holdout {ref!r} is not one of the events: {names(events)}")


def plan_folds(events: Sequence[Event], holdout: Sequence[str] | None = None) -> list[Fold]:
    """Leave-one-out over ``events`` (``holdout`` empty), else one fold scoring the ``holdout``
    events (names or URLs) and training on the rest. Every fold is checked with :func:`check_fold`."""
    events = list(events)
    if len(events) < 2:
        raise UserError(f"the held-out protocol needs at least 2 events, got {len(events)} ({names(events)})")
    if holdout:
        scored = list(dict.fromkeys(_find(events, h) for h in holdout))
        folds = [Fold(1, [e for e in events if e not in scored], scored)]
    else:
        folds = [Fold(i + 1, [x for x in events if x != e], [e]) for i, e in enumerate(events)]
    for f in folds:
        check_fold(f)
    return folds


def check_fold(fold: Fold, workdir: str | Path | None = None) -> None:
    """Raise :class:`HeldoutLeakError` if a scored event is one of the fold's training events
    (same name or the same archive)."""
    if not fold.train:
        raise UserError(f"fold {fold.index} has no training events (scored: {names(fold.scored)})")
    if not fold.scored:
        raise UserError(f"fold {fold.index} scores no event")
    train = {archive_key(e.url, workdir) for e in fold.train} | {e.name for e in fold.train}
    leak = [e for e in fold.scored if e.name in train or archive_key(e.url, workdir) in train]
    if leak:
        raise HeldoutLeakError(f"fold {fold.index} would score {names(leak)}, which it also trains on "
                               f"(training events: {names(fold.train)}); a held-out event must never be trained on")


def check_model_events(model_cfg, scored: Event, workdir: str | Path) -> None:
    """Raise :class:`HeldoutLeakError` when the model's own recipe trained on ``scored``."""
    d = model_cfg.data
    urls = [e.url for e in d.archives] if d.archives else [d.archive or str(Path(workdir) / "archive.zarr")]
    key = archive_key(scored.url, workdir)
    if any(archive_key(u, workdir) == key or event_name(u) == scored.name for u in urls):
        raise HeldoutLeakError(f"refusing to score {scored.name}: the model's recipe trains on it "
                               f"(data.archives {urls})")


def _has_val(entries: Sequence[dict], default_split) -> bool:
    for e in entries:
        whole = (e.get("split") or {}).get("whole") if e.get("split") is not None else default_split.whole
        if whole in (None, "val"):
            return True
    return False


def fold_config(base_cfg, fold: Fold, budget_s: float | None = None):
    """The fold's training recipe: ``data.archives`` = exactly the fold's training events."""
    tree = base_cfg.model_dump(mode="json", exclude_none=True)
    entries = [dict(e.entry, url=e.url) for e in fold.train]
    if not _has_val(entries, base_cfg.data.split):
        raise UserError(f"fold {fold.index}: none of its training events ({names(fold.train)}) has validation "
                        "windows (all are split: {whole: train|test}); keep an event with a block split or "
                        "split: {whole: val} among the training events")
    tree["data"]["archives"] = entries
    tree["data"].pop("archive", None)
    if budget_s is not None:
        tree["train"]["time_budget_s"] = float(budget_s)
    # the run name (checkpoints, resume) follows the whole fold recipe: a changed recipe or --set never
    # resumes another recipe's fold; the same command run again resumes its own
    digest = hashlib.sha1(json.dumps([sorted(e.url for e in fold.train), tree], sort_keys=True,
                                     default=str).encode()).hexdigest()[:6]
    base_name = base_cfg.run.name or base_cfg.name
    scored = "_".join(e.name for e in fold.scored)[:48]
    tree.setdefault("run", {})["name"] = f"{base_name[:40]}-heldout-{scored}-{digest}"
    tr = tree.setdefault("tracking", {})
    tr["experiment"] = f"{base_cfg.tracking.experiment or base_cfg.name}-skill-folds"
    tr["register_model"] = f"{base_name}-heldout-fold"
    cfg = config_from_dict(tree, f"fold {fold.index} of {base_cfg.name}")
    got = {archive_key(e.url, None) for e in cfg.data.archives}
    want = {archive_key(e.url, None) for e in fold.train}
    if got != want or any(archive_key(e.url, None) in got for e in fold.scored):
        raise HeldoutLeakError(f"fold {fold.index}: its recipe's archives {sorted(got)} are not exactly its "
                               f"training events {sorted(want)}")
    return cfg
