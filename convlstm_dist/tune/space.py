"""Sweep YAML → Ray Tune search space, trial configs, and the refusal rules.

A sweep file::

    name: radar-sweep
    base: convlstm_dist/recipes/demo.yaml     # a recipe path (relative to the sweep file or the cwd) or an inline recipe
    set: {train.epochs: 6}                    # optional dotted overrides of the base
    space:
      model.depth:   {choice: [1, 2, 3]}      # derived axes: depth d, kernel k, filters f →
      model.kernel:  {choice: [3, 5, 7]}      #   hidden [f]*d, input_kernel [k]*d, state_kernel [k]*d
      model.filters: {choice: [32, 64, 128]}
      train.lr:      {loguniform: [1.0e-4, 3.0e-3]}
      data.batch_size: {choice: [4, 8]}
      train.seed:    {randint: [0, 100]}      # [low, high) like numpy
      train.loss:    {grid: [mse, bmse]}      # every value, num_samples times
    search:
      metric: val_loss        # or val_csi_2mmh (any metric the training loop reports)
      mode: min               # min | max
      num_samples: 8
      scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # max_t = train.epochs
      search_alg: random      # random | optuna (needs optuna installed)
      max_concurrent_trials: null   # null: as many as the cluster's GPUs (or 1 on CPU)
      trial_memory_gb: 16     # per-trial budget for the memory estimate
    smoke_test:               # merged over the file with --smoke-test
      set: {train.epochs: 2}
      space: {model.filters: {choice: [4, 8]}}
      search: {num_samples: 4}

Any other dotted key of the recipe can be an axis (``train.optimizer: {choice: [adam, rmsprop]}``).
Impossible combinations (even kernels, a model whose training memory estimate exceeds the
per-trial budget, values the recipe schema rejects) are refused before anything starts.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from convlstm_dist.config import (
    Config,
    config_from_dict,
    merge_tree,
    read_yaml_mapping,
    set_path,
    validation_message,
)
from convlstm_dist.errors import UserError
from convlstm_dist.vocabulary import metric_name

DERIVED = ("model.depth", "model.kernel", "model.filters")
DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
# keys that change the model's size or the activations held for backward
MEMORY_KEYS = ("model.depth", "model.kernel", "model.filters", "model.hidden", "model.input_kernel",
               "model.state_kernel", "model.patch", "model.height", "model.width", "model.in_channels",
               "data.batch_size", "data.in_len", "data.out_len")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SchedulerSpec(_Strict):
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="default: the trial's train.epochs")


class SearchSpec(_Strict):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(8, ge=1)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    search_alg: Literal["random", "optuna"] = "random"
    max_concurrent_trials: int | None = Field(None, ge=1)
    trial_memory_gb: float = Field(16.0, gt=0)
    workers_per_trial: int | None = Field(None, ge=1, description="default: the base recipe's scaling.num_workers")
    seed: int | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return metric_name(v)


class SweepSpec(_Strict):
    name: str = "sweep"
    base: str | dict = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    search: SearchSpec = Field(default_factory=SearchSpec)
    storage_path: str | None = Field(None, description="default <workdir>/sweeps; may be s3://")
    smoke_test: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", v):
            raise ValueError(f"sweep name {v!r} must be letters, digits, '.', '_' or '-'")
        return v

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict) -> dict:
        for key, dist in v.items():
            if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
                raise ValueError(f"space.{key}: expected one of {{{', '.join(f'{d}: ...' for d in DISTRIBUTIONS)}}}, "
                                 f"got {dist!r}")
            kind, arg = next(iter(dist.items()))
            if kind in ("choice", "grid"):
                if not isinstance(arg, list) or not arg:
                    raise ValueError(f"space.{key}: {kind} needs a non-empty list")
            else:
                if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(a, (int, float)) for a in arg)):
                    raise ValueError(f"space.{key}: {kind} needs [low, high]")
                lo, hi = arg
                if not lo < hi:
                    raise ValueError(f"space.{key}: {kind} needs low < high, got {arg}")
                if kind == "loguniform" and lo <= 0:
                    raise ValueError(f"space.{key}: loguniform needs low > 0, got {lo}")
                if kind == "randint" and not all(isinstance(a, int) for a in arg):
                    raise ValueError(f"space.{key}: randint needs integers [low, high)")
        return v


def _resolve_base(base: str | dict, sweep_dir: Path | None) -> tuple[dict, str]:
    if isinstance(base, dict):
        return copy.deepcopy(base), "inline base"
    candidates = [Path(base)]
    if sweep_dir is not None and not Path(base).is_absolute():
        candidates.insert(0, sweep_dir / base)
    pkg = Path(__file__).resolve().parent.parent
    candidates.append(pkg / "recipes" / Path(base).name)
    for p in candidates:
        if p.is_file():
            return read_yaml_mapping(p, "base recipe", "", "sections"), str(p)
    raise UserError(f"sweep base recipe {base!r} not found (looked in {', '.join(str(c) for c in candidates)})")


def load_sweep(path: str | Path | dict, smoke_test: bool = False) -> tuple[SweepSpec, dict]:
    """``(spec, base recipe tree)``; with ``smoke_test`` the file's ``smoke_test:`` section is merged in."""
    sweep_dir = None
    if isinstance(path, dict):
        tree, origin = copy.deepcopy(path), "sweep dict"
    else:
        p = Path(path)
        tree = read_yaml_mapping(p, "sweep file", "the reference sweep is pipelines/sweeps/radar.yaml",
                                 "name:, base:, space:, search:")
        origin, sweep_dir = str(p), p.resolve().parent
    if smoke_test:
        smoke = tree.get("smoke_test") or {}
        if not isinstance(smoke, dict):
            raise UserError(f"{origin}: smoke_test must be a mapping (set:, space:, search:)")
        unknown = set(smoke) - {"set", "space", "search", "name"}
        if unknown:
            raise UserError(f"{origin}: smoke_test has unknown keys {sorted(unknown)} (allowed: set, space, search, name)")
        for key in ("set", "search"):
            if key in smoke:
                tree[key] = merge_tree(tree.get(key) or {}, smoke[key])
        if "space" in smoke:
            tree["space"] = {**(tree.get("space") or {}), **smoke["space"]}
        if "name" in smoke:
            tree["name"] = smoke["name"]
        else:
            tree["name"] = f"{tree.get('name', 'sweep')}-smoke"
    try:
        spec = SweepSpec.model_validate(tree)
    except ValidationError as err:
        raise UserError(validation_message(err, f"invalid sweep ({origin}{' --smoke-test' if smoke_test else ''}):",
                                           unknown_key="unknown key")) from None
    if spec.search.search_alg == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise UserError("search.search_alg: optuna is not installed (pip install optuna) — use 'random'") from None
    base, _ = _resolve_base(spec.base, sweep_dir)
    for dotted, value in spec.set.items():
        set_path(base, dotted, value)
    return spec, base


def to_tune(space: dict[str, dict]) -> dict:
    """The Ray Tune ``param_space`` (flat dotted keys)."""
    from ray import tune

    out = {}
    for key, dist in space.items():
        kind, arg = next(iter(dist.items()))
        if kind == "choice":
            out[key] = tune.choice(list(arg))
        elif kind == "grid":
            out[key] = tune.grid_search(list(arg))
        elif kind == "uniform":
            out[key] = tune.uniform(*arg)
        elif kind == "loguniform":
            out[key] = tune.loguniform(*arg)
        else:
            out[key] = tune.randint(*arg)
    return out


def _layer_list(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def trial_tree(base: dict, sample: dict[str, Any]) -> dict:
    """The recipe tree for one sample: derived axes become per-layer lists, other keys are set as-is."""
    tree = copy.deepcopy(base)
    model = tree.setdefault("model", {})
    defaults = Config().model
    hidden = _layer_list(model.get("hidden", defaults.hidden))
    ik = _layer_list(model.get("input_kernel", defaults.input_kernel))
    sk = _layer_list(model.get("state_kernel", defaults.state_kernel))
    for key, value in sample.items():
        if key not in DERIVED:
            set_path(tree, key, value)
    if any(k in sample for k in DERIVED):
        d = int(sample.get("model.depth", len(hidden)))
        f = int(sample["model.filters"]) if "model.filters" in sample else None
        k = int(sample["model.kernel"]) if "model.kernel" in sample else None
        model = tree["model"]
        model["hidden"] = [f] * d if f is not None else [hidden[min(i, len(hidden) - 1)] for i in range(d)]
        model["input_kernel"] = [k] * d if k is not None else [ik[min(i, len(ik) - 1)] for i in range(d)]
        model["state_kernel"] = [k] * d if k is not None else [sk[min(i, len(sk) - 1)] for i in range(d)]
    return tree


def memory_estimate_bytes(cfg: Config) -> int:
    """A simple training-memory estimate of one worker: fp32 parameters × 4 (weights, grads, two
    Adam moments) plus the activations kept for backward (per layer and time step: the input and
    state of the gate convolution, four gates, cell and hidden state) for the encoder and the
    forecaster, plus the input/output frames. Deliberately rough; meant to catch the combinations
    that are off by a large factor, not to be exact."""
    m, d = cfg.model, cfg.data
    cin0 = m.in_channels * m.patch * m.patch
    params = 0
    for stack in ("encoder", "forecaster"):
        for i, (h, ki, ks) in enumerate(zip(m.hidden, m.input_kernel, m.state_kernel)):
            cin = (cin0 if i == 0 else m.hidden[i - 1]) if stack == "encoder" else (0 if i == 0 else m.hidden[i - 1])
            params += 4 * h * (cin * ki * ki + h * ks * ks) + 4 * h
    params += sum(m.hidden) * cin0 + cin0
    hw = (m.height // m.patch) * (m.width // m.patch)
    steps = d.in_len + d.out_len
    per_step = sum((cin0 if i == 0 else m.hidden[i - 1]) + 8 * h for i, h in enumerate(m.hidden))
    activations = d.batch_size * steps * per_step * hw
    frames = d.batch_size * steps * m.in_channels * m.height * m.width * 3
    return int(4 * (4 * params + activations + frames))


def _discrete_values(key: str, dist: dict) -> list:
    kind, arg = next(iter(dist.items()))
    if kind in ("choice", "grid"):
        return list(arg)
    if kind == "randint":
        lo, hi = arg
        vals = list(range(lo, hi)) if hi - lo <= 16 else [lo, hi - 1]
        return vals
    return [arg[0], arg[1]] if key in MEMORY_KEYS else [arg[0]]


def check_space(spec: SweepSpec, base: dict) -> int:
    """Refuse a sweep that contains a combination that cannot work. Returns the number checked.

    Every combination of the axes that shape the model or its memory (choice/grid values, the
    range of randint, the ends of continuous ranges) is built into a full recipe and validated:
    even kernels or other schema errors, and a memory estimate above ``search.trial_memory_gb``,
    refuse the whole sweep with a list of the offending combinations."""
    space = spec.space
    problems: list[str] = []
    for key, dist in space.items():
        kind, arg = next(iter(dist.items()))
        if key.endswith("kernel") and kind == "randint":
            lo, hi = arg
            evens = [v for v in range(lo, min(hi, lo + 3)) if v % 2 == 0]
            if evens:
                problems.append(f"space.{key}: randint [{lo}, {hi}) draws even kernels (e.g. {evens[0]}); "
                                "use {choice: [3, 5, 7]}")
        if key.endswith("kernel") and kind in ("uniform", "loguniform"):
            problems.append(f"space.{key}: kernels are odd integers; use {{choice: [3, 5, 7]}}")
        if key.endswith("kernel") and kind in ("choice", "grid"):
            bad = [v for v in arg if not isinstance(v, int) or v < 1 or v % 2 == 0]
            if bad:
                problems.append(f"space.{key}: kernel sizes {bad} are not odd positive integers "
                                "('same' padding needs odd kernels)")
    if problems:
        raise UserError("sweep refused before launch:\n  " + "\n  ".join(problems))
    keys = list(space)
    value_lists = [_discrete_values(k, space[k]) for k in keys]
    budget = spec.search.trial_memory_gb * 2 ** 30
    seen, checked = set(), 0
    bad_combos: list[str] = []
    for combo in itertools.product(*value_lists):
        sample = dict(zip(keys, combo))
        sig = tuple(sorted((k, repr(v)) for k, v in sample.items()))
        if sig in seen:
            continue
        seen.add(sig)
        checked += 1
        desc = ", ".join(f"{k}={v}" for k, v in sample.items()) or "(base recipe)"
        try:
            cfg = config_from_dict(trial_tree(base, sample), f"trial {desc}")
        except UserError as err:
            bad_combos.append(f"{desc}: {str(err).splitlines()[-1].strip()}")
            continue
        est = memory_estimate_bytes(cfg)
        if est > budget:
            bad_combos.append(f"{desc}: estimated training memory {est / 2 ** 30:.1f} GiB per worker exceeds "
                              f"search.trial_memory_gb={spec.search.trial_memory_gb:g}")
        if checked >= 20000:
            break
    if bad_combos:
        head = bad_combos[:12]
        more = f"\n  ... and {len(bad_combos) - 12} more" if len(bad_combos) > 12 else ""
        raise UserError(f"sweep refused before launch: {len(bad_combos)} of {checked} combinations cannot work:\n  "
                        + "\n  ".join(head) + more
                        + "\nnarrow the space (or raise search.trial_memory_gb if the estimate is too cautious)")
    return checked


def sample_label(sample: dict) -> str:
    return ", ".join(f"{k}={(f'{v:.3g}' if isinstance(v, float) else v)}" for k, v in sample.items())


def is_log_axis(spec: SweepSpec, key: str) -> bool:
    dist = spec.space.get(key, {})
    return "loguniform" in dist or (key.endswith(".lr") and all(
        isinstance(v, (int, float)) and v > 0 for v in next(iter(dist.values()), [])))
