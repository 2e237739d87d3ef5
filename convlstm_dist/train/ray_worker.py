"""The Ray Train backend of the training loop: the function every Ray Train worker runs.

Contract with the driver (``train_loop_config``): ``cfg`` (resolved config dict), ``variable``
(archive variable), ``clock`` (name of the epoch-clock actor), ``tracking_uri`` and ``run_id``
(MLflow; rank 0 logs), ``fault_nan_at``.

The loop itself is :func:`convlstm_dist.train.fit.fit`, the same as ``train --local``'s. This
backend supplies the DDP wrapping, the batches, ``ray.train.report`` once per epoch on every rank
(rank 0 attaches the checkpoint) and the epoch clock (the data position read by Ray Data's read
tasks; rank 0's progress lines, printed by the driver). Batches (``data.loader``):

* ``stream``: the Ray Data shards (read tasks anywhere in the cluster; pinned, copied non-blocking,
  2 batches ahead);
* ``memory``: the driver ships the data plan; each worker reads the frames once and cuts its own
  share of every epoch's batches in a background thread (``MultiMemorySplit.batches(shard=...)``),
  like ``train --local``: no per-epoch start-up.
"""

from __future__ import annotations

import logging
import os
import tempfile

import torch

from convlstm_dist.checkpoint import FILENAME, read_checkpoint
from convlstm_dist.config import config_from_dict
from convlstm_dist.errors import UserError
from convlstm_dist.tracking.mlflow_tracker import Tracker
from convlstm_dist.train.backend import Backend, FitOptions
from convlstm_dist.train.feed import prefetch
from convlstm_dist.train.fit import fit
from convlstm_dist.train.graph_step import broadcast_parameters
from convlstm_dist.train.recovery import checkpoint_dir_name, choose_checkpoint, record_verified, run_dir


class RayTrainBackend(Backend):
    def __init__(self, cfg, config: dict):
        import ray
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.cfg = cfg
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.run_name = ctx.get_experiment_name()
        self.clock = ray.get_actor(config["clock"]) if config.get("clock") else None
        self.storage = config.get("storage")  # (path, pyarrow filesystem or None): the run's checkpoint storage
        self.last_verified: tuple[str, int] | None = None  # (folder, epoch) of the newest checkpoint known intact
        plan = config.get("plan")
        self.splits = plan.memory_splits(("train", "val")) if plan is not None else None  # data.loader: memory
        if self.splits is None:
            self.train_shard = ray.train.get_dataset_shard("train")
            self.val_shard = ray.train.get_dataset_shard("val")

    def say(self, msg: str) -> None:
        import ray

        if self.clock is not None and self.rank == 0:
            ray.get(self.clock.note_line.remote(msg))

    def wrap(self, model, ddp: bool = True):
        import ray.train.torch

        if ddp or self.world == 1:
            return ray.train.torch.prepare_model(model)

        model = ray.train.torch.prepare_model(model, parallel_strategy=None)  # device only, no DDP wrapper
        broadcast_parameters(model)
        return model

    def restore(self):
        """The newest intact checkpoint of the run's manifest (``train/recovery.py``); Ray's latest when
        the run has no manifest."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if self.storage is None:
            if ckpt is None:
                return None
            with ckpt.as_directory() as d:
                return read_checkpoint(d), ckpt.path
        latest = ckpt.path.rstrip("/").rsplit("/", 1)[-1] if ckpt is not None else None
        chosen = choose_checkpoint(self.storage[0], self.storage[1], self.run_name, latest, say=self.say)
        if chosen is not None:
            self.last_verified = (chosen[1].rstrip("/").rsplit("/", 1)[-1], int(chosen[0]["train"].get("epoch", 0)))
        return chosen

    def begin_epoch(self, epoch: int) -> None:
        import ray

        if self.clock is not None:
            ray.get(self.clock.set.remote(epoch))

    def train_batches(self, epoch: int, drop_last: bool):
        d = self.cfg.data
        if self.splits is not None:
            return prefetch(self.splits["train"].batches(d.batch_size, d.seed, epoch, True, d.crops_per_window,
                                                         d.augment, drop_last=drop_last,
                                                         shard=(self.rank, self.world)), self.device)
        return self.train_shard.iter_torch_batches(
            batch_size=self.cfg.data.batch_size, device=self.device, drop_last=drop_last, prefetch_batches=2,
            pin_memory=self.device.type == "cuda")

    def val_batches(self):
        if self.splits is not None:
            return prefetch(self.splits["val"].batches(self.cfg.data.batch_size, self.cfg.data.seed + 10_000, 0,
                                                       False), self.device)
        return self.val_shard.iter_torch_batches(batch_size=self.cfg.data.batch_size, device=self.device,
                                                 prefetch_batches=2, pin_memory=self.device.type == "cuda")

    def checkpoint(self, write, metrics: dict, improved: bool) -> None:
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics)
            return

        with tempfile.TemporaryDirectory() as d:
            write(d)
            name = checkpoint_dir_name(int(metrics.get("epoch", 0)))
            try:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=name)
            except Exception as exc:  # noqa: BLE001 - a refused write: say where and what still holds
                raise self._write_refused(name, int(metrics.get("epoch", 0)), exc) from exc
            if self.storage is not None:  # read the upload back; only a verified checkpoint joins the manifest
                epoch = int(metrics.get("epoch", 0))
                try:
                    why = record_verified(self.storage[0], self.storage[1], self.run_name, name, f"{d}/{FILENAME}",
                                          epoch, metrics)
                except OSError as err:
                    why = f"the manifest could not be updated: {' '.join(str(err).split())[:200]}"
                if why:
                    self.say(f"[convlstm-dist] checkpoint {name} is not verified ({why}); a resume will not use it")
                else:
                    self.last_verified = (name, epoch)

    def _write_refused(self, name: str, epoch: int, exc: BaseException):
        """The one-line error of a checkpoint upload the storage refused, naming the intact previous one."""
        where = self.run_name
        if self.storage:
            where = ("s3://" if self.storage[1] is not None else "") + run_dir(self.storage[0], self.run_name)
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        prev = self.last_verified  # known here: no read from a storage that is failing
        kept = (f"the previous checkpoint {prev[0]} (epoch {prev[1]}) is intact"
                if prev else "no earlier checkpoint of this run was verified")
        return UserError(f"the checkpoint storage refused to write the checkpoint of epoch {epoch} "
                         f"({where}/{name}): {reason}; {kept}. Make the storage writable again (permissions, "
                         "credentials, free space), then run the same command to resume")

    def nan_stop(self, message: str, epoch: int, step: int) -> None:
        import ray
        import ray.train

        if self.rank == 0 and self.clock is not None:
            ray.get(self.clock.note_stop.remote(message))
        ray.train.report({"epoch": epoch, "nan_stop": 1.0, "nan_epoch": epoch, "nan_step": step})


def train_loop_per_worker(config: dict) -> None:
    import ray

    cfg = config_from_dict(config["cfg"], "driver")
    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray.train", "ray.data"):  # per-report INFO lines drown the epoch summaries
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(max(1, int(os.environ.get("CONVLSTM_THREADS", "1"))))
    backend = RayTrainBackend(cfg, config)
    tracker = None
    if backend.rank == 0 and config.get("run_id"):
        tracker = Tracker(config["tracking_uri"], config["run_id"])
    init = ray.get(config["init"]) if config.get("init") is not None else None
    fit(cfg, backend, config["variable"], tracker,
        FitOptions(fault_nan_at=config.get("fault_nan_at"), data_version=config.get("data_version"),
                   sources=config.get("sources"), init_weights=init))
