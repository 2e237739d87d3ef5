"""Evaluate a trained model against baselines on an archive, spread over Ray tasks.

Contract:

* **Windows.** ``in_len + n_out`` gap-free frames (``in_len`` from the model's config, ``n_out``
  its ``out_len`` unless overridden). Chosen either by the model's own split rule
  (``data.split``, plus its wet filter) — ``split="test"`` or ``"val"`` — or by a time range
  (every window whose frames all lie in ``[start, end]``). ``max_windows`` keeps an evenly spaced
  subset. Every method sees exactly the same windows and crops.
* **Crop.** Full grid by default (any size: the model runs on it padded up to its patch with
  no-data, and its forecast is cropped back, ``nowcaster.pad_to_patch``), or an ``h x w`` crop
  per window chosen as in training (``data.crops.choose_crop``, seeded by ``(data.seed, t0)``).
* **Units.** Scores are in rain rate: the archive is converted with its own Z–R relation
  (``Archive.to_rain_mmh``), the model output with ``from_model``; so a model trained on mm/h can
  be scored on a dBZ archive and vice versa. Moving MNIST models are scored in intensity.
  NaN in the observation is no data (not counted); NaN input is 0 for the model, and the model's
  forecast is NaN where it has no observed source (``nowcaster``: the last frame's coverage, carried
  along the motion for a Lagrangian model), as persistence and optical flow are.
* **Motion** (``motion="shared"``, the default). One motion field per window, estimated once on the
  *whole frame* of the archive (the input frames only): the optical-flow baselines' field
  (``verify.baselines.motion_field``, pysteps Lucas–Kanade). The scored crop's slice of it is the
  motion of every extrapolation baseline *and* of a Lagrangian model (``Nowcaster.predict_batch(...,
  motion=)``), so no method's motion is limited to what it sees inside the crop and all share one
  field. ``motion="own"`` (before 2026-12): every method estimates its motion from the scored crop
  itself (the baselines with Lucas–Kanade, the Lagrangian model with its phase correlation).
* **Same pixels.** Every method is scored on one sample: the pixels where the observation is valid
  and *every* method has a forecast. Optical flow and a Lagrangian model have none where their
  trajectory starts outside the grid or coverage (an inflow border that grows with the lead time);
  those pixels count for no method.
* **Distribution.** Windows are cut into contiguous chunks; one Ray task per chunk reads its frames
  once per batch, runs the model and the baselines and returns ``SkillAccumulator.to_state()`` per
  method; the driver merges them. A local Ray (``num_cpus=workers``) is started if none is running.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from convlstm_dist.data.crops import choose_crop
from convlstm_dist.data.quantity import quantity_of_variable
from convlstm_dist.data.windows import SplitRule, build_index, gap_free_starts
from convlstm_dist.errors import UserError
from convlstm_dist.ray_session import ray_session
from convlstm_dist.verify import (
    DEFAULT_BASELINES, SkillAccumulator, available_baselines, label_rows, run_baseline, usable_baselines,
)
from convlstm_dist.verify.baselines import MOTION_BASELINES, motion_field
from convlstm_dist.verify.fss import FSSAccumulator
from convlstm_dist.verify.postprocess import probability_match
from convlstm_dist.verify.scores import skill_metrics
from convlstm_dist.vocabulary import FSS_SCALES_KM, FSS_THRESHOLDS_MMH, MOTION_MODES, metric_key

BATCH = 4
PM_SUFFIX = "_pm"  # method label suffix: the model's forecast after probability matching
EVAL_SCOPE = "eval"  # metric-name scope of windows chosen by time range, not by a split


@dataclass
class Selection:
    starts: np.ndarray
    in_len: int
    n_out: int
    label: str
    record: dict = field(default_factory=dict)


def parse_time(text: str, what: str) -> np.datetime64:
    try:
        return np.datetime64(str(text).rstrip("Z"), "s")
    except ValueError:
        raise UserError(f"{what} {text!r} is not a time (use ISO 8601, e.g. 2010-08-26T06:00)") from None


def parse_crop(text: str | None) -> tuple[int, int] | None:
    if text in (None, "", "full"):
        return None
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise UserError(f"--crop {text!r}: expected HxW, e.g. 128x128") from None
    if h < 1 or w < 1:
        raise UserError(f"--crop {text!r}: sizes must be positive")
    return h, w


def select_windows(nc, archive, split: str | None = "test", start: str | None = None, end: str | None = None,
                   n_out: int | None = None, max_windows: int | None = None) -> Selection:
    """The window starts to evaluate (see module docstring)."""
    cfg = nc.config
    in_len, n_out = nc.in_len, int(n_out or nc.out_len)
    length = in_len + n_out
    times = archive.times
    if len(times) < length:
        raise UserError(f"too few frames: {archive.url} has {len(times)} frames, one window needs "
                        f"{in_len} input + {n_out} output = {length}")
    if split == "all" and start is None and end is None:  # an archive the model never trained on
        starts = gap_free_starts(times, archive.timestep_s, length)
        label, record = "all windows", {"split": "all", "gap_free_windows": len(starts)}
    elif start is not None or end is not None:
        lo = parse_time(start, "--start") if start else times[0]
        hi = parse_time(end, "--end") if end else times[-1]
        cand = gap_free_starts(times, archive.timestep_s, length)
        starts = cand[(times[cand] >= lo) & (times[cand + length - 1] <= hi)]
        label, record = f"{lo}..{hi}", {"start": str(lo), "end": str(hi), "gap_free_windows": len(cand)}
    else:
        s = cfg.data.split
        rule = SplitRule(s.block_hours, s.val_every, s.test_every, s.gap_steps)
        wet = None
        if cfg.data.min_wet_fraction > 0:
            thr = np.asarray(archive.stats["thresholds"], dtype=float)
            j = int(np.argmin(np.abs(thr - cfg.data.wet_threshold_mmh)))
            wet = np.asarray(archive.stats["wet_fraction"])[:, j]
        idx = build_index(times, archive.timestep_s, in_len, n_out, rule, wet, cfg.data.min_wet_fraction,
                          cfg.data.wet_threshold_mmh)
        starts = idx.starts[split]
        label, record = split, {"split": split, **idx.summary()}
    if len(starts) == 0:
        how = (f"the {split} split of the model's rule (data.split {cfg.data.split.model_dump()}), on an archive "
               "the model was trained on; score an archive it never saw, or choose windows knowingly with "
               "--split val|all or --start/--end") if start is None and end is None else f"[{start}, {end}]"
        raise UserError(f"too few frames: no gap-free window of {length} frames in {how} "
                        f"({len(times)} frames in {archive.url})")
    if max_windows and len(starts) > max_windows:
        keep = np.unique(np.linspace(0, len(starts) - 1, int(max_windows)).round().astype(int))
        starts = starts[keep]
    record.update(n_windows=int(len(starts)), in_len=in_len, n_out=n_out)
    return Selection(np.sort(np.asarray(starts, dtype=np.int64)), in_len, n_out, label, record)


def window_motion(inputs: np.ndarray, ys: slice = slice(None), xs: slice = slice(None)) -> np.ndarray:
    """The window's one motion field (``motion="shared"``): ``verify.baselines.motion_field`` (pysteps
    LK, pixels per step, ``[u, v]``) of the *whole frame's* input frames ``inputs`` (T_in, H, W), cut to
    the scored region ``ys, xs`` -> (2, h, w). What the extrapolation baselines take as ``velocity=``;
    :func:`model_motion` turns it into a model's ``motion=``."""
    return motion_field(inputs)[:, ys, xs]


def model_motion(nc, velocity: np.ndarray | None) -> np.ndarray | None:
    """``velocity`` (..., 2, h, w) of :func:`window_motion` as ``Nowcaster.predict*(motion=)``
    ([rows, columns]) for a Lagrangian model; None for an Eulerian one (it has no motion)."""
    if velocity is None or getattr(nc, "frame", "eulerian") != "lagrangian":
        return None
    from convlstm_dist.models.motion import from_uv

    return from_uv(velocity)


def score_chunk(nc, archive, starts, in_len: int, n_out: int, crop, seed: int, methods: list[str],
                thresholds, motion: str = "shared") -> dict[str, dict]:
    """Score ``methods`` (the model's label first, then baselines) on windows ``starts``: per method the
    ``SkillAccumulator`` state, with the FSS accumulator's state under ``"fss"`` (FSS at
    ``vocabulary.FSS_THRESHOLDS_MMH`` over ``FSS_SCALES_KM``, for rain-rate archives). ``motion``: one
    of ``MOTION_MODES`` (module docstring)."""
    if motion not in MOTION_MODES:
        raise ValueError(f"motion must be one of {MOTION_MODES}, got {motion!r}")
    lagrangian = getattr(nc, "frame", "eulerian") == "lagrangian"
    shared = motion == "shared" and (lagrangian or any(m in MOTION_BASELINES for m in methods[1:]))

    length = in_len + n_out

    accs = {m: SkillAccumulator(thresholds, n_out) for m in methods}
    q = quantity_of_variable(archive.variable)
    pixel_m = (getattr(archive, "attrs", None) or {}).get("pixel_size_m")
    fss_thr = [t for t in FSS_THRESHOLDS_MMH if t in [float(x) for x in thresholds]]
    fss = {m: FSSAccumulator(fss_thr, FSS_SCALES_KM, n_out, pixel_m) for m in methods} if fss_thr else {}
    model_variable = q.physical_variable
    for b in range(0, len(starts), BATCH):
        batch = starts[b:b + BATCH]
        lo, hi = int(batch[0]), int(batch[-1]) + length
        raw = archive.read(lo, hi)
        rate = archive.to_rain_mmh(raw) if q.has_rain_rate else raw
        rate = np.where(np.isnan(raw), np.nan, rate).astype(np.float32)  # NaN = no data; -inf dBZ = 0 mm/h
        h, w = crop or raw.shape[1:]
        xs, ys, vs = [], [], []
        for s in batch:
            a = int(s) - lo
            block = rate[a:a + length]
            cy, cx = choose_crop(np.isfinite(block).all(axis=0), (h, w), np.random.default_rng([seed, 0, int(s), 0]))
            if shared:  # once per window, on the whole frame's input frames: (2, H, W) pysteps' [u, v]
                vs.append(window_motion(block[:in_len], slice(cy, cy + h), slice(cx, cx + w)))
            block = block[:, cy:cy + h, cx:cx + w]
            xs.append(block[:in_len])
            ys.append(block[in_len:])
        x, obs = np.stack(xs), np.stack(ys)
        velocity = np.stack(vs) if shared else None
        motion_of_model = model_motion(nc, velocity)
        if motion_of_model is not None:
            fcst = nc.predict_batch(x, n_out, model_variable, motion=motion_of_model)
        else:
            fcst = nc.predict_batch(x, n_out, model_variable)
        fcsts = {methods[0]: fcst}
        for m in methods[1:]:
            if m.endswith(PM_SUFFIX):  # the same forecast, probability-matched to the last input frame
                fcsts[m] = probability_match(fcst, x[:, -1])
            else:
                fcsts[m] = run_baseline(m, x, n_out, velocity)
        # one verification sample: the pixels where every method forecasts (optical flow has none
        # where its trajectory starts outside the grid) and the observation is valid
        common = np.isfinite(obs)
        for f in fcsts.values():
            common &= np.isfinite(f)
        obs = np.where(common, obs, np.nan)
        for m, f in fcsts.items():
            accs[m].accumulate(f, obs)
            if fss:
                fss[m].accumulate(np.where(common, f, np.nan), obs)
    return {m: {**acc.to_state(), **({"fss": fss[m].to_state()} if fss else {})} for m, acc in accs.items()}


def _chunks(starts: np.ndarray, workers: int) -> list[np.ndarray]:
    """Contiguous chunks, one Ray task each: at least two per worker (while there are windows) and
    at most ``BATCH`` windows each, so progress moves at least once per batch (a task reads its
    frames per batch anyway, so smaller chunks read nothing twice)."""
    n = max(1, min(len(starts), 2 * workers), -(-len(starts) // BATCH))
    return [c for c in np.array_split(starts, n) if len(c)]


class Progress:
    """Windows scored so far, on stderr: a tqdm bar on a terminal, else one line per finished chunk."""

    def __init__(self, total: int, tasks: int, stream=None, tty: bool | None = None, enabled: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.tasks, self.done, self.tasks_done = int(total), int(tasks), 0, 0
        self.enabled, self.t0 = enabled, time.monotonic()
        tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.bar = None
        if enabled and tty:
            from tqdm import tqdm

            # updates come once per chunk (seconds to minutes apart): draw every one of them
            self.bar = tqdm(total=self.total, unit="window", desc="[evaluate]", file=self.stream, leave=False,
                            dynamic_ncols=True, mininterval=0)

    def update(self, windows: int) -> None:
        self.done += int(windows)
        self.tasks_done += 1
        if self.bar is not None:
            self.bar.update(int(windows))
        elif self.enabled:
            spent = time.monotonic() - self.t0
            left = spent / self.done * (self.total - self.done) if self.done else float("nan")
            eta = f", ~{left:.0f} s left" if self.done < self.total else ""
            print(f"[evaluate] {self.done}/{self.total} windows scored ({self.tasks_done}/{self.tasks} tasks) "
                  f"in {spent:.0f} s{eta}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_evaluation(nc, archive, sel: Selection, crop=None, baselines=None,
                   workers: int = 2, ray_address: str | None = None,
                   probability_matching: bool = False, progress: bool = True,
                   motion: str = "shared") -> tuple[list[dict], dict]:
    """``(labelled rows for every method, record)``; scores merged from one Ray task per chunk.
    ``probability_matching`` adds the method ``<model>_pm`` (:mod:`convlstm_dist.verify.postprocess`);
    ``progress`` reports finished windows on stderr (:class:`Progress`); ``motion``: one of
    ``MOTION_MODES`` (module docstring, "Motion")."""
    import ray

    if motion not in MOTION_MODES:
        raise UserError(f"motion {motion!r}: expected one of {', '.join(MOTION_MODES)}")
    baselines = DEFAULT_BASELINES if baselines is None else baselines
    unknown = [b for b in baselines if b not in available_baselines()]
    if unknown:
        raise UserError(f"unknown baseline(s) {unknown}; available: {available_baselines()}")
    baselines, left_out = usable_baselines(baselines, sel.in_len)
    for note in left_out:
        print(f"[evaluate] {note}", file=sys.stderr, flush=True)
    nc.check_variable(archive.variable)
    q = quantity_of_variable(archive.variable)
    if q.has_rain_rate:
        archive.to_rain_mmh(np.zeros(1, np.float32))  # no Z–R relation → UserError now
    _, H, W = archive.shape
    if crop and (crop[0] > H or crop[1] > W):
        raise UserError(f"crop {crop[0]}x{crop[1]} is larger than the archive grid {H}x{W}")
    h, w = crop or (H, W)
    try:
        nc.check_grid(h, w)
    except UserError as err:
        raise UserError(f"{err} ({'crop' if crop else 'full archive grid'}; pass --crop HxW)") from None
    thresholds = q.skill_thresholds  # mm/h for rain; intensity units for Moving MNIST
    model_label = nc.config.model.kind
    methods = [model_label, *([model_label + PM_SUFFIX] if probability_matching else []), *baselines]

    # connected here: disconnected (a local Ray shut down) at the end; a task the memory monitor kills
    # is retried once, not forever (Ray's default)
    with ray_session(ray_address, num_cpus=workers, oom_retries=1):
        task = ray.remote(num_cpus=1)(score_chunk)
        nc_ref = ray.put(nc)
        chunks = _chunks(sel.starts, workers)
        refs = [task.remote(nc_ref, archive, c, sel.in_len, sel.n_out, crop, nc.config.data.seed, methods,
                            thresholds, motion) for c in chunks]
        bar = Progress(len(sel.starts), len(refs), enabled=progress)
        try:
            size = {r: len(c) for r, c in zip(refs, chunks)}
            got, pending = {}, list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for r in done:
                    got[r] = ray.get(r)
                    bar.update(size[r])
            states = [got[r] for r in refs]  # merged in chunk order, as before
        except ray.exceptions.OutOfMemoryError:
            raise UserError(f"evaluation ran out of memory: {workers} task(s) at once, each forecasting "
                            f"{h}x{w} windows; use --crop HxW, fewer --workers or a machine with more memory") from None
        except ray.exceptions.RayTaskError as err:  # a UserError in a task (e.g. S3 read) stays one clear message
            if isinstance(getattr(err, "cause", None), UserError):
                raise UserError(str(err.cause)) from None
            raise
        finally:
            bar.close()
    step_min = archive.timestep_s / 60.0
    totals, fss = {}, {}
    for m in methods:
        totals[m] = SkillAccumulator.from_state(states[0][m])
        for st in states[1:]:
            totals[m].merge(SkillAccumulator.from_state(st[m]))
        if "fss" in states[0][m]:
            fss[m] = FSSAccumulator.from_state(states[0][m]["fss"])
            for st in states[1:]:
                fss[m].merge(FSSAccumulator.from_state(st[m]["fss"]))
    rows = evaluation_rows(totals, model_label, step_min, sel.record.get("split") or EVAL_SCOPE, fss)
    record = {**sel.record, "methods": methods, "crop": f"{h}x{w}", "full_grid": crop is None,
              "model_grid": "{}x{}".format(*nc.model_grid(h, w)),
              "archive": archive.url, "variable": archive.variable, "tasks": len(states),
              "model": nc.source, "quantity": nc.quantity, "lead_step_min": step_min,
              "motion": ("shared: pysteps LK on the whole frame, once per window, for the model and the baselines"
                         if motion == "shared" else "own: each method estimates motion from the scored crop")}
    return rows, record


def evaluation_rows(totals: dict, model_label: str, lead_step_min: float, scope: str,
                    fss: dict | None = None) -> list[dict]:
    """The rows of :func:`run_evaluation`: per method (``totals``: label -> merged ``SkillAccumulator``,
    the model's label ``model_label``), ``verify.table.label_rows`` of its ``compute()`` rows, each
    with the ``scope`` of the windows (the split, or ``eval`` for a time range) and the ``model``
    label, which :func:`metrics_from_rows` names the lead-pooled metrics by; with ``fss`` (label ->
    merged ``verify.fss.FSSAccumulator``) also the FSS columns (``fss_<km>km`` and their sums)."""
    rows = []
    for m, acc in totals.items():
        for r in label_rows(acc.compute(), m, lead_step_min):
            extra = fss[m].columns(r["lead_index"], r["threshold_mmh"]) if fss and m in fss else {}
            rows.append({**r, **extra, "scope": scope, "model": model_label})
    return rows


def metrics_from_rows(rows: list[dict]) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` for MLflow, named by the one rule of training and tuning
    (``verify.scores.metric_key``):

    * per lead, ``step`` = lead time in minutes: ``<method>_csi_<thr>mmh``, ``<method>_hss_<thr>mmh``,
      ``<method>_mse``, ``<method>_mae`` (``method``: the row's label, e.g. ``convlstm``, ``persistence``);
    * pooled over the lead times, ``step`` 0, for rows of :func:`run_evaluation` (which carry the
      ``scope`` of the windows, the split or ``eval``, and the ``model`` label): the names training
      reports for the same scores (``verify.scores.skill_metrics``), e.g. ``val_csi_2mmh`` for the
      model and ``val_persistence_mse`` for persistence when ``--split val`` is scored.
    """
    out = []
    for r in rows:
        step = int(round(r["lead_min"]))
        out.append((metric_key("csi", r["threshold_mmh"], r["method"]), r["csi"], step))
        out.append((metric_key("hss", r["threshold_mmh"], r["method"]), r["hss"], step))
    seen = set()
    for r in rows:
        key = (r["method"], r["lead_min"])
        if key not in seen:
            seen.add(key)
            step = int(round(r["lead_min"]))
            out += [(metric_key(s, None, r["method"]), r[s], step) for s in ("mse", "mae")]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("scope"):
            groups.setdefault((r["scope"], r["method"], r.get("model")), []).append(r)
    for (scope, method, model), mine in groups.items():
        pooled = skill_metrics(mine, scope, None if method == model else method)
        out += [(k, v, 0) for k, v in pooled.items()]
    return [(k, v, s) for k, v, s in out if v is not None and math.isfinite(v)]
