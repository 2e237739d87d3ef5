"""Checks that turn late failures and endless waits of a training run into one clear message.

* :func:`check_storage_writable` — before anything starts: write and delete a small probe object
  under ``run.storage_path`` (local or ``s3://``, with the filesystem Ray Train will use), so a
  read-only key fails in seconds instead of after the first epoch with a pyarrow traceback.
* :func:`check_cluster_resources` — before a ``TorchTrainer`` is built: GPUs or CPUs asked for but
  absent from the Ray cluster make Ray wait forever ("No available node types can fulfill
  resource request"); refuse at once, saying what was asked and what the cluster has.
* :func:`check_storage_shared` — once Ray is joined, before a worker starts: a local ``run.storage_path``
  on a cluster of more than one node (or one that autoscales) is refused: each node would write its
  checkpoints to its own disk, and a resumed run would not find them.
* :func:`user_error_from_failure` — after ``trainer.fit()`` failed: find a ``UserError`` raised
  inside a worker (wrapped in ``WorkerGroupError`` / ``UserExceptionWithTraceback`` /
  ``RayTaskError``), write the full traceback to a log file and return the one-line message.
"""

from __future__ import annotations

import re
import time
import traceback
import uuid
from pathlib import Path

from convlstm_dist.data import endpoint_of, scrub, storage_options_for
from convlstm_dist.data.storage import ray_storage
from convlstm_dist.errors import UserError
from convlstm_dist import ray_internals  # module attribute: tests replace its functions

PROBE_PREFIX = ".convlstm-write-probe-"
PROBE_CONNECT_TIMEOUT_S = 3
PROBE_REQUEST_TIMEOUT_S = 4
PROBE_ATTEMPTS = 2
DATA_READ_CPUS = 1.0  # a Ray Data read task asks for 1 CPU; none free beside the workers = endless wait


# --------------------------------------------------------------------------- storage


def _reason(text: str) -> str:
    t = text.upper().replace(" ", "_")
    if any(k in t for k in ("ACCESS_DENIED", "ACCESSDENIED", "SIGNATURE_DOES_NOT_MATCH", "SIGNATUREDOESNOTMATCH",
                            "INVALID_ACCESS_KEY", "INVALIDACCESSKEY", "FORBIDDEN", "PERMISSION_DENIED",
                            "PERMISSIONERROR", "READ-ONLY", "READ_ONLY_FILE_SYSTEM")):
        return "access denied: use credentials that may write there (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) " \
               "or another storage path"
    if "NO_SUCH_BUCKET" in t or "NOSUCHBUCKET" in t:
        return "the bucket does not exist: create it first"
    if any(k in t for k in ("NETWORK_CONNECTION", "CURLCODE", "TIMEOUT", "COULDN'T_CONNECT", "CONNECTION_REFUSED")):
        return "the storage endpoint did not answer: check AWS_ENDPOINT_URL / data.endpoint_url and that it runs"
    return text.splitlines()[0][:200] if text else "unknown error"


def check_storage_writable(storage_path: str, endpoint_url: str | None = None, what: str = "run.storage_path") -> None:
    """Write and delete a small probe object under ``storage_path``; ``UserError`` (one line) if either fails.

    S3 goes through the same pyarrow filesystem and credentials as Ray Train's checkpoints, with short
    timeouts and one retry so that a silent endpoint fails within ~10 s. Deleting matters too: Ray removes
    checkpoints beyond ``run.keep_checkpoints``."""
    name = f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
    if not storage_path.startswith("s3://"):
        probe = Path(storage_path) / name
        step = "write"
        try:
            Path(storage_path).mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            step = "delete"
            probe.unlink()
        except OSError as err:
            raise UserError(f"cannot {step} checkpoints under {what} {storage_path}: "
                            f"{err.strerror or err} — choose a writable folder (or --workdir)") from None
        return
    import pyarrow.fs as pafs

    path, fs = ray_storage(storage_path, endpoint_url, connect_timeout=PROBE_CONNECT_TIMEOUT_S,
                           request_timeout=PROBE_REQUEST_TIMEOUT_S,
                           retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=PROBE_ATTEMPTS))
    key = f"{path.rstrip('/')}/{name}"
    opts = storage_options_for(storage_path, endpoint_url)
    where = f"{storage_path} at {endpoint_of(opts)}"
    step = "write"
    try:
        with fs.open_output_stream(key) as fh:
            fh.write(b"ok")
        step = "delete"
        fs.delete_file(key)
    except OSError as err:
        text = scrub(scrub(str(err), opts), {"secret": _env_secret()})
        raise UserError(f"cannot {step} checkpoints under {what} {where}: {_reason(text)}") from None


def _env_secret() -> str | None:
    import os

    return os.environ.get("AWS_SECRET_ACCESS_KEY")


# --------------------------------------------------------------------------- cluster resources


def _fmt(res: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in res.items()) or "nothing"


def resource_problem(per_worker: dict[str, float], workers: int, cluster: dict[str, float],
                     largest_node: dict[str, float] | None = None, data_cpus: float = DATA_READ_CPUS) -> str | None:
    """Why ``workers`` Train workers asking ``per_worker`` each (plus ``data_cpus`` for Ray Data reads)
    can never be placed on a cluster with ``cluster`` resources (the largest node: ``largest_node``);
    None if they can."""
    need = {k: v * workers for k, v in per_worker.items() if v > 0}
    need_all = dict(need)
    need_all["CPU"] = need_all.get("CPU", 0.0) + data_cpus
    have = {k: float(cluster.get(k, 0.0)) for k in need_all}
    eps = 1e-9
    short = [k for k in need_all if have[k] + eps < need_all[k]]
    if not short and largest_node is not None:
        short = [k for k, v in per_worker.items() if v > 0 and float(largest_node.get(k, 0.0)) + eps < v]
        if short:
            return (f"scaling asks for {workers} worker(s) with {_fmt(per_worker)} each, but no node of the Ray "
                    f"cluster has {_fmt({k: per_worker[k] for k in short})} (largest node: "
                    f"{_fmt({k: largest_node.get(k, 0.0) for k in per_worker})})")
    if not short:
        return None
    asks = []
    for k in short:
        why = f"{workers} worker(s) x {per_worker.get(k, 0.0):g} {k}"
        if k == "CPU" and data_cpus:
            why += f" + {data_cpus:g} CPU for Ray Data reads"
        asks.append(f"{need_all[k]:g} {k} ({why})")
    has = " and ".join(f"{float(cluster.get(k, 0.0)):g} {k}" for k in sorted({"CPU", *need_all}))
    hint = ("set scaling.use_gpu=false or use a cluster with GPUs" if "GPU" in short and have.get("GPU", 0) == 0
            else "lower scaling.num_workers / scaling.cpus_per_worker / scaling.gpus_per_worker, or use a larger "
                 "cluster")
    return f"scaling asks for {' and '.join(asks)}, but the Ray cluster has {has}: {hint}"


def check_cluster_resources(cfg) -> None:
    """``UserError`` at once when the cluster can never hold the run's workers (Ray would wait forever).

    An autoscaling cluster is judged by its maximum size (its node types × max counts, as Ray Train's
    own check does), a fixed one (local Ray, ``ray start``) by what it has now."""
    import ray

    s = cfg.scaling
    per_worker = {"CPU": float(s.cpus_per_worker)}
    if s.use_gpu:
        per_worker["GPU"] = float(s.gpus_per_worker)

    largest = None
    cluster = ray_internals.autoscaler_max_resources()  # None unless an autoscaler published limits
    if not cluster:
        cluster = ray.cluster_resources()
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if nodes:
            largest = {k: max(float(n.get(k, 0.0)) for n in nodes) for k in per_worker}
    problem = resource_problem(per_worker, s.num_workers, cluster, largest)
    if problem:
        raise UserError(problem)


# --------------------------------------------------------------------------- shared storage

S3_STORAGE_EXAMPLE = "s3://my-bucket/runs"


def is_shared_storage(storage_path: str) -> bool:
    """True for a URL every node reaches by itself (``s3://``, ``gs://``, ...); False for a folder."""
    return "://" in str(storage_path) and not str(storage_path).startswith("file://")


def storage_problem(storage_path: str, nodes: int, autoscaling: bool = False,
                    what: str = "run.storage_path") -> str | None:
    """Why ``storage_path`` cannot hold the checkpoints of a run on a cluster of ``nodes`` live nodes
    (``autoscaling``: it can add more); None if it can."""
    if is_shared_storage(storage_path) or (nodes <= 1 and not autoscaling):
        return None
    size = f"{nodes} nodes" + (" and autoscales" if autoscaling else "") if nodes > 1 else "an autoscaler"
    return (f"{what} {storage_path} is a local folder, but the Ray cluster has {size}: each node would keep "
            f"its checkpoints on its own disk and a resumed run would not find them. Use storage every node "
            f"reaches, e.g. --set {what}={S3_STORAGE_EXAMPLE} (with AWS_ENDPOINT_URL for a non-AWS S3 server)")


def check_storage_shared(storage_path: str, what: str = "run.storage_path") -> None:
    """``UserError`` when the connected Ray cluster has (or can grow to) more than one node and
    ``storage_path`` is a local folder (see :func:`storage_problem`)."""
    import ray

    if is_shared_storage(storage_path):
        return
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    problem = storage_problem(storage_path, nodes, bool(ray_internals.autoscaler_max_resources()), what)
    if problem:
        raise UserError(problem)


# --------------------------------------------------------------------------- worker errors


def _children(exc: BaseException):
    """(rank or None, wrapped exception) for every exception ``exc`` wraps (Ray Train, Ray core, chaining)."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict):
        for rank in sorted(failures, key=lambda r: (not isinstance(r, int), r if isinstance(r, int) else 0)):
            yield rank, failures[rank]
    for attr in ("_base_exc", "controller_failure", "cause"):
        try:
            inner = exc.__dict__.get(attr) if hasattr(exc, "__dict__") else None
        except Exception:  # noqa: BLE001
            inner = None
        if isinstance(inner, BaseException):
            yield None, inner
    for inner in (exc.__cause__, exc.__context__):
        if inner is not None:
            yield None, inner


def _is_wrapper(exc: BaseException) -> bool:
    """Ray's dual RayTaskError(UserError) subclasses pass isinstance(UserError) but print the whole trace."""
    try:
        from ray.exceptions import RayError

        return isinstance(exc, RayError)
    except ImportError:  # pragma: no cover
        return False


def find_user_error(exc: BaseException) -> tuple[UserError, int | None] | None:
    """The first ``UserError`` inside a training failure and the worker rank it came from (if known)."""
    seen: set[int] = set()
    queue: list[tuple[int | None, BaseException]] = [(None, exc)]
    while queue:
        rank, e = queue.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError) and not _is_wrapper(e):
            return e, rank
        queue.extend((r if r is not None else rank, c) for r, c in _children(e))
    return None


# Ray Data appends its retry context to the message of an exception raised in a read task
# ("<message>\nFailed to <what> after 1/1 attempts (total backoff 0.0s).\nTo change retry attempts, ...")
_RAY_DATA_SUFFIX = re.compile(r"\nFailed to .+? after \d+/\d+ attempts \(total backoff ", re.S)


def user_message(err: BaseException) -> str:
    """The message the project raised, without what Ray appended on the way."""
    text = str(err)
    m = _RAY_DATA_SUFFIX.search(text)
    return text[:m.start()] if m else text


def failure_log_text(exc: BaseException) -> str:
    """The driver's traceback plus every worker's own traceback text."""
    parts = ["".join(traceback.format_exception(exc))]
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict):
        for rank, f in failures.items():
            parts.append(f"\n===== worker rank {rank} =====\n{f}")
    return "\n".join(parts)


def user_error_from_failure(exc: BaseException, log_dir: Path, run_name: str) -> UserError | None:
    """If a ``UserError`` caused ``exc`` (a failed ``fit()``): write the full traceback to
    ``log_dir/<run>-<time>-error.log`` and return a ``UserError`` with the one-line message and the log's path."""
    found = find_user_error(exc)
    if found is None:
        return None
    err, rank = found
    where = f" (raised in Ray Train worker rank {rank})" if rank is not None else ""
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{run_name}-{time.strftime('%Y%m%dT%H%M%S')}-error.log"
        log.write_text(failure_log_text(exc))
        tail = f"; full traceback in {log}"
    except OSError:
        log, tail = None, ""
    user = UserError(f"{user_message(err)}{where}{tail}")
    user.log_path = log  # the driver copies it beside the run's checkpoints when those are remote
    return user
