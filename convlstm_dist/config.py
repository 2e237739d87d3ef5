"""Typed configuration tree (pydantic v2).

Defaults live here, in code; a YAML recipe (``pipelines/*.yaml``) overrides them and
``--set a.b=c`` overrides single values. Unknown keys, even kernels, negative sizes and other
impossible values fail at load time with a message that names the key, before any cluster work.

The spatial size the model sees is ``model.height × model.width``: training windows are
cropped from the archive to that size (so it is also the crop size).

Why one module of over 400 lines: it is the schema of a recipe, one section per key of the tree
(``model``, ``data``, ``train``, ``scaling``, ``run``, ``tracking``), with each key's validation next
to its declaration; split, a reader would lose the one place where every recipe key is spelled out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from convlstm_dist.data.quantity import get_quantity, quantity_of_source
from convlstm_dist.data.quantity import available_sources
from convlstm_dist.errors import UserError
from convlstm_dist.vocabulary import metric_name


class _Strict(BaseModel):
    # allow_inf_nan=False: no float here (rates, fractions, sizes, CPUs) makes sense as NaN or ±inf;
    # YAML reads `.inf` / `.nan` as floats, and `train.lr=.inf` would otherwise train on NaN weights
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


NAME_CHARS = "letters, digits, '.', '_' and '-' (starting with a letter or digit, no '..', at most 100 characters)"


def check_name(v: str, what: str) -> str:
    """A name that becomes a directory (checkpoints), an MLflow run key and part of a search filter: no path
    separators, quotes, spaces or '..'."""
    if len(v) > 100 or ".." in v or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", v):
        raise ValueError(f"{what} {v!r} may only contain {NAME_CHARS}")
    return v


def registered(value: str, names) -> str:
    """``value`` if a registry lists it, else ``ValueError`` naming the valid names (pydantic validators)."""
    names = list(names)
    if value not in names:
        raise ValueError(f"{value!r} is not one of: {', '.join(names)}")
    return value


class ModelConfig(_Strict):
    """Architecture. Kernel lists are per layer; a single int is broadcast to every layer."""

    kind: str = Field("convlstm", description="a model of the registry: convlstm, fclstm (models.available_models)")
    in_channels: int = Field(1, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [64, 64])
    input_kernel: list[int] = Field(default_factory=lambda: [3, 3])
    state_kernel: list[int] = Field(default_factory=lambda: [3, 3])
    patch: int = Field(2, ge=1)
    height: int = Field(64, ge=1)
    width: int = Field(64, ge=1)
    impl: Literal["fast", "literal"] = "fast"
    frame: str = Field(
        "eulerian", description="eulerian: the paper's model on the grid; lagrangian: the same network forecasting "
                                "in the frame that moves with the rain (inputs aligned by their estimated motion, "
                                "forecast advected back; convlstm on rain rate only)")
    residual_gate_mmh: float | None = Field(
        None, gt=0, description="frame=lagrangian only: for the first residual_gate_leads leads, the learned "
                                "residual acts only where the last input frame has at least this rain rate "
                                "(mm/h); elsewhere those leads are the advected last frame. null: no gate")
    residual_gate_leads: int = Field(1, ge=1, description="how many leads residual_gate_mmh gates")

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        from convlstm_dist.models import available_models  # torch: loaded when a recipe is checked, not by --help

        return registered(v, available_models())

    @field_validator("frame")
    @classmethod
    def _frame(cls, v: str) -> str:
        from convlstm_dist.models import FRAMES

        return registered(v, FRAMES)

    @field_validator("input_kernel", "state_kernel", mode="before")
    @classmethod
    def _scalar_to_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, int) else v

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        n = len(self.hidden)
        if n == 0:
            raise ValueError("model.hidden must list at least one layer width")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"model.hidden must be positive, got {self.hidden}")
        for key in ("input_kernel", "state_kernel"):
            ks = getattr(self, key)
            if len(ks) == 1 and n > 1:
                object.__setattr__(self, key, ks * n)
                ks = ks * n
            if len(ks) != n:
                raise ValueError(f"model.{key} has {len(ks)} entries but model.hidden has {n} layers")
            for i, k in enumerate(ks):
                if k < 1 or k % 2 == 0:
                    raise ValueError(
                        f"model.{key}[{i}] = {k} (layer {i + 1}): kernels must be odd and positive "
                        "so that 'same' padding keeps the grid"
                    )
        if self.residual_gate_mmh is not None and self.frame != "lagrangian":
            raise ValueError(f"model.residual_gate_mmh={self.residual_gate_mmh} gates the residual of "
                             f"model.frame=lagrangian; model.frame={self.frame} has none: set it to null")
        for dim in ("height", "width"):
            if getattr(self, dim) % self.patch:
                raise ValueError(f"model.{dim}={getattr(self, dim)} is not divisible by model.patch={self.patch}")
        return self


class SplitConfig(_Strict):
    """Train/val/test by contiguous time blocks, assigned deterministically by block index."""

    block_hours: float = Field(24.0, gt=0)
    val_every: int = Field(5, ge=2, description="every n-th block is validation")
    test_every: int = Field(0, ge=0, description="every n-th block (after val) is test; 0 = no test split")
    gap_steps: int = Field(0, ge=0, description="frames dropped at block borders between splits")
    whole: Literal["train", "val", "test"] | None = Field(
        None, description="put every window in this split, ignoring the blocks (a held-out archive in data.archives)")


class ArchiveEntry(_Strict):
    """One archive of a multi-archive recipe (``data.archives``)."""

    url: str = Field(..., min_length=1, description="local path (relative: to the workdir) or s3:// URL")
    weight: float = Field(1.0, gt=0, description="relative sampling weight of this archive's training windows "
                                                 "per epoch (2 = each window twice, 0.5 = half of them)")
    split: SplitConfig | None = Field(None, description="this archive's split rule (default: data.split)")
    endpoint_url: str | None = Field(None, description="S3 endpoint for this archive (default: data.endpoint_url)")


class DataConfig(_Strict):
    source: str = Field("archive", description="archive, or moving_mnist (generated; data.quantity.available_sources)")
    archive: str | None = Field(None, description="local path or s3:// URL; default <workdir>/archive.zarr")
    archives: list[ArchiveEntry] | None = Field(
        None, description="several archives trained together (instead of data.archive): windows never cross "
                          "archives, each keeps its own split; relative local paths resolve against the workdir")
    endpoint_url: str | None = None
    in_len: int = Field(5, ge=1)
    out_len: int = Field(15, ge=1)
    batch_size: int = Field(8, ge=1)
    min_wet_fraction: float = Field(0.0, ge=0, le=1)
    wet_threshold_mmh: float = Field(0.5, ge=0)
    split: SplitConfig = Field(default_factory=SplitConfig)
    seed: int = 0
    crops_per_window: int = Field(1, ge=1)
    read_block_mb: float = Field(96.0, ge=1, le=4096,
                                 description="data.loader stream: decoded frames (MiB, float32) one Ray Data read "
                                             "task covers; it reads that many consecutive time chunks (at least "
                                             "one, and at least one window long), each frame once, and streams "
                                             "its rows out in blocks of at most one chunk's windows")
    loader: Literal["auto", "stream", "memory"] = Field(
        "auto", description="how Ray Train workers get batches: stream (Ray Data read tasks, any archive size), "
                            "memory (each worker reads the frames once and cuts its batches in a background "
                            "thread: no per-epoch start-up), auto = memory when the plan's frames fit "
                            "data.memory_limit_gb, else stream. train --local always holds them in memory")
    memory_limit_gb: float = Field(2.0, gt=0, description="data.loader auto: largest frame footprint (GiB, per "
                                                           "worker) held in memory")
    read_retries: int = Field(6, ge=0, description="data.loader stream: how often a read task retries a read while the "
                                                    "S3 store cannot be reached (connection refused or reset, "
                                                    "timeout, 502/503), waiting 1, 2, 4, 8, 15, 15, ... s between "
                                                    "tries (6: an outage of ~45 s is ridden out); 0: fail at once. "
                                                    "Past it the run fails over to its last checkpoint "
                                                    "(run.max_failures), then stops with the endpoint and the key")
    augment: bool = Field(False, description="training crops get one of the 8 flips/rotations of the square "
                                             "(the same for every frame of a window); validation never")
    skip_damaged: bool = Field(False, description="read every chunk of each archive before planning and leave out "
                                                  "the windows that touch a chunk that no longer decodes (logged "
                                                  "with their count); off: such a chunk stops training with an "
                                                  "error naming it and its time range")
    # Moving MNIST (generated): sequences per split
    mnist_train: int = Field(2000, ge=1)
    mnist_val: int = Field(200, ge=1)
    mnist_test: int = Field(200, ge=1)

    @field_validator("archives", mode="before")
    @classmethod
    def _archive_strings(cls, v: Any) -> Any:
        # `archives: [a.zarr, b.zarr]` is shorthand for entries with defaults
        return [{"url": e} if isinstance(e, str) else e for e in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _check_archives(self) -> "DataConfig":
        if self.archives is not None:
            if not self.archives:
                raise ValueError("data.archives is empty: list at least one archive (or use data.archive)")
            if self.archive is not None:
                raise ValueError("set data.archive or data.archives, not both")
            if self.source != "archive":
                raise ValueError("data.archives needs data.source: archive")
            urls = [e.url for e in self.archives]
            dup = sorted({u for u in urls if urls.count(u) > 1})
            if dup:
                raise ValueError(f"data.archives lists {dup[0]!r} more than once")
        return self

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return registered(v, available_sources())


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    optimizer: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    rmsprop_decay: float = Field(0.9, gt=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["none", "cosine", "step"] = "none"
    loss: str = Field("mse", description="a training loss of the registry: mse, mae, bmse, bmae, bce "
                                         "(models.available_losses(training=True))")
    lead_decay: float | None = Field(None, gt=0, le=1, description="lead-weighted loss: lead k (0 = first forecast "
                                     "frame) weighs lead_decay**k (weights normalised to sum 1), so early leads count "
                                     "more; also the validation loss. None: one loss over all leads (the paper's)")
    loss_weight_cap: float | None = Field(None, ge=1, description="balanced losses (bmse, bmae): no HKO-7 weight "
                                          "above this (5: weights 1, 2, 5, 5, 5 instead of 1, 2, 5, 10, 30). "
                                          "None: the HKO-7 table as is")
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    early_stopping_patience: int | None = Field(None, ge=1)
    engine: Literal["auto", "eager", "compiled", "graph"] = Field(
        "auto", description="training step: eager; compiled (gates fused by torch.compile, CUDA); graph (the whole "
                            "step as CUDA graphs; under DDP two graphs around one flat gradient all-reduce); auto = "
                            "graph on one CUDA device, compiled on CUDA otherwise, eager on CPU. Both `train` and "
                            "`train --local` run it")
    channels_last: bool = Field(False, description="NHWC activations and weights (CUDA tensor cores)")
    time_budget_s: float | None = Field(None, ge=0, description="stop training after this many seconds, at a "
                                        "step boundary; the partial epoch is validated and checkpointed")
    init_from: str | None = Field(None, min_length=1, description="warm start: a new run starts from these "
                                  "weights (a checkpoint path, or models:/NAME/VERSION, runs:/RUN_ID/model); the "
                                  "shapes must fit model.*; a run with a checkpoint of its own resumes from that")
    seed: int = 0

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str) -> str:
        from convlstm_dist.models import available_losses  # torch: loaded when a recipe is checked, not by --help

        return registered(v, available_losses(training=True))

    @model_validator(mode="after")
    def _weight_cap_needs_balanced_loss(self):
        from convlstm_dist.models import BALANCED_LOSSES  # torch: loaded when a recipe is checked, not by --help

        if self.loss_weight_cap is not None and self.loss not in BALANCED_LOSSES:
            raise ValueError(f"train.loss_weight_cap caps the weights of the balanced losses "
                             f"({', '.join(BALANCED_LOSSES)}); train.loss is {self.loss}: drop the cap or pick one of those")
        return self


class ScalingConfig(_Strict):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)
    ray_address: str | None = Field(None, description="None: start a local Ray; 'auto' or ray://...: attach")


class RunConfig(_Strict):
    storage_path: str | None = Field(None, description="checkpoints; default <workdir>/runs; may be s3://")
    name: str | None = Field(None, description="stable run name; default <recipe name>")
    keep_checkpoints: int = Field(2, ge=1)
    checkpoint_metric: str = Field("val_loss", description="a metric training reports (train/metrics.py) that picks the "
                                   "best checkpoint and drives early stopping: the highest is best for CSI, POD, HSS "
                                   "(e.g. val_csi_0.5mmh), the lowest for losses, errors and FAR")
    max_failures: int = Field(2, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v, "run name")  # it names the checkpoint directory

    @field_validator("checkpoint_metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return metric_name(v)


class TrackingConfig(_Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<workdir>/mlflow.db")
    experiment: str | None = Field(None, description="default: the recipe name")
    register_model: str | None = Field(None, description="registered model name; default the recipe name")
    enabled: bool = True
    outage_wait_s: float = Field(300.0, ge=0, description="a tracking server that went away during training: how "
                                                          "long the end of the run waits for it before keeping the "
                                                          "run's metrics, report and model in <workdir>/mlflow-outbox "
                                                          "(upload later with convlstm-dist mlflow-upload)")


class Config(_Strict):
    name: str = "convlstm"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "name")  # it names runs and experiments

    @model_validator(mode="after")
    def _check_frame(self) -> "Config":
        if self.model.frame == "lagrangian":
            q = quantity_of_source(self.data.source)
            if self.model.kind != "convlstm":
                raise ValueError("model.frame=lagrangian needs model.kind=convlstm")
            if not q.has_rain_rate or get_quantity(q).output_is_logits(self.train.loss):
                raise ValueError(f"model.frame=lagrangian forecasts rain rate in its own units (residuals that add); "
                                 f"data.source={self.data.source} with train.loss={self.train.loss} does not: "
                                 "use model.frame=eulerian")
        return self


def set_path(tree: dict, dotted: str, value: Any) -> None:
    """``tree[a][b][c] = value`` for ``dotted`` ``a.b.c``, creating sections; a value in the way → ``UserError``."""
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise UserError(f"--set {dotted}: '{k}' is a value, not a section")
        node = nxt
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["a.b=3", "c=[1, 2]"]`` → nested dict; values are parsed as YAML (numbers, lists, null)."""
    tree: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set expects key=value (e.g. train.lr=3e-4), got {item!r}")
        key, raw = item.split("=", 1)
        set_path(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def merge_tree(base: dict, over: dict) -> dict:
    """``base`` with ``over`` laid on top, section by section (neither is changed)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_tree(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


UNKNOWN_KEY = "unknown key (check spelling; `convlstm-dist config --show` prints every key)"


def validation_message(err: ValidationError, header: str, unknown_key: str = UNKNOWN_KEY) -> str:
    """``header``, then one ``  a.b.c: problem`` line per pydantic error (``unknown_key`` for a forbidden key)."""
    lines = [header]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = unknown_key
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def config_from_dict(tree: dict, origin: str = "dict") -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise UserError(validation_message(err, f"invalid configuration ({origin}):")) from None


def read_yaml_mapping(path: str | Path, what: str, where: str, keys: str) -> dict:
    """A YAML file that must hold a mapping; missing file, bad YAML or another shape → ``UserError``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {str(path)!r} not found ({where})")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{what} {path} is not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise UserError(f"{what} {path} must be a mapping of {keys}")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults ← YAML recipe at ``path`` ← ``--set`` overrides; validated."""
    tree: dict = {}
    origin = "defaults"
    if path is not None:
        tree = read_yaml_mapping(path, "recipe", "recipes live in pipelines/, e.g. pipelines/radar_nowcast.yaml",
                                 "sections (model:, data:, train: ...)")
        origin = str(path)
    if overrides:
        tree = merge_tree(tree, parse_overrides(overrides))
        origin += " + --set"
    return config_from_dict(tree, origin)


def flatten(cfg: Config | dict, prefix: str = "") -> dict[str, Any]:
    """Flat ``{"model.hidden": "[64, 64]", ...}`` for tracking parameters."""
    tree = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _in_model_range(cfg: Config, rate_mmh: float) -> float:
    """A rain rate (mm/h) in the model range of the recipe's quantity (``rain_norm``: log1p(R) / log1p(128))."""
    import numpy as np

    q = quantity_of_source(cfg.data.source)
    return float(q.to_model(np.array([rate_mmh], dtype=np.float32), q.physical_variable)[0])


def build_model_from_config(cfg: Config, compile: bool = False, channels_last: bool = False):
    """The model the recipe describes (imports torch lazily); ``compile``/``channels_last`` only
    change how it computes (training engine), never its parameters."""
    from convlstm_dist.models import build_model

    m = cfg.model
    return build_model(
        m.kind,
        in_channels=m.in_channels,
        hidden=list(m.hidden),
        input_kernel=list(m.input_kernel),
        state_kernel=list(m.state_kernel),
        patch=m.patch,
        height=m.height,
        width=m.width,
        impl=m.impl,
        **({"frame": m.frame} if m.frame != "eulerian" else {}),
        **({"residual_gate": _in_model_range(cfg, m.residual_gate_mmh), "residual_gate_leads": m.residual_gate_leads}
           if m.residual_gate_mmh is not None else {}),
        **({"compile": True} if compile else {}),
        **({"channels_last": True} if channels_last else {}),
    )
