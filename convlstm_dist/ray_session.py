"""Starting or joining Ray, the one way every command does it.

* :func:`ray_session` is the context manager train, evaluate, hindcast and the experiments use: it
  connects by :func:`start_or_join_ray` if this process is not connected yet, and on leaving
  disconnects only what it connected (a local Ray it started is shut down with it; a Ray that was
  already running stays).
* :func:`start_or_join_ray` is the only place that calls ``ray.init`` (``tests/unit/test_ray_session.py`` keeps
  it so). Its address policy: inside ``ray job submit`` (``RAY_JOB_ID`` / ``RAY_ADDRESS`` set) join the
  job's cluster (``address="auto"``); an explicit address joins that cluster; otherwise start a *local*
  Ray (``address="local"``, never a bare ``ray.init()``, which may attach to a stale cluster recorded in
  Ray's temp dir) without a dashboard, quiet, with the driver's environment forwarded to the workers.

Import-light: Ray is imported inside the functions. Ray's private internals stay in
:mod:`convlstm_dist.ray_internals`.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from convlstm_dist.addresses import free_port
from convlstm_dist import ray_internals  # module attribute: tests replace its functions

# what the driver hands to every Ray worker (runtime_env) when it starts or joins a cluster itself
FORWARDED_ENV_VARS = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_REGION")


def job_api_address(value: str | None) -> bool:
    """True for an ``http(s)://`` address: Ray's job API (``ray job submit --address``), not a cluster
    ``ray.init`` can join. Ray's docs export such a ``RAY_ADDRESS`` for the job CLI; local commands
    run with it set must not try to join it."""
    return bool(value) and value.split("://", 1)[0].lower() in ("http", "https")


def in_ray_job() -> bool:
    """True inside ``ray job submit`` (or with a cluster ``RAY_ADDRESS`` exported): Ray is joined, never
    started. An ``http(s)://`` ``RAY_ADDRESS`` (a job API address) does not count."""
    addr = os.environ.get("RAY_ADDRESS")
    return bool(os.environ.get("RAY_JOB_ID") or (addr and not job_api_address(addr)))


def forwarded_env_vars() -> dict[str, str]:
    """The variables of :data:`FORWARDED_ENV_VARS` that are set in this process."""
    return {k: os.environ[k] for k in FORWARDED_ENV_VARS if k in os.environ}


def ray_init_kwargs(address: str | None = None, *, num_cpus: int | None = None, env_vars: dict | None = None,
                    dashboard: bool = False, log_to_driver: bool = False, logging_level: int = logging.ERROR,
                    oom_retries: int | None = None) -> dict:
    """The ``ray.init`` arguments the address policy chooses (see the module docstring; nothing is started).

    ``env_vars``: the workers' environment (default :func:`forwarded_env_vars`); inside a job the job's
    runtime env applies instead. ``num_cpus``, ``dashboard`` and ``oom_retries`` (how often a task the
    memory monitor kills is retried; None keeps Ray's default) only apply to a local start: Ray refuses
    them when it joins an existing cluster."""
    common = {"log_to_driver": log_to_driver, "logging_level": logging_level}
    if in_ray_job():
        return {"address": "auto", **common}
    env = forwarded_env_vars() if env_vars is None else dict(env_vars)
    runtime_env = {"env_vars": env} if env else None
    if address:
        return {"address": address, **common, "runtime_env": runtime_env}
    kw = {"address": "local", "include_dashboard": dashboard, **common, "runtime_env": runtime_env}
    if num_cpus is not None:
        kw["num_cpus"] = max(1, int(num_cpus))
    if oom_retries is not None:
        kw["_system_config"] = {"task_oom_retries": int(oom_retries)}
    return kw


def start_or_join_ray(address: str | None = None, *, num_cpus: int | None = None, workdir: str | Path | None = None,
                      env_vars: dict | None = None, dashboard: bool = False, log_to_driver: bool = False,
                      logging_level: int = logging.ERROR, oom_retries: int | None = None,
                      pin_gcs_port: bool = False) -> bool:
    """Connect this process to Ray by the project's policy (:func:`ray_init_kwargs`); a no-op when it
    already is. True if this call started a local Ray instance (this process owns it and shuts it down).

    ``workdir``: link this session's Ray logs as ``<workdir>/logs/ray`` (a local node only).
    ``pin_gcs_port``: a local start fixes its GCS port and hands ``RAY_ADDRESS`` to every worker, so
    workers find *this* cluster's state API even when other Ray instances run on the machine (the sweep:
    Train's placement-group cleaner needs it for the trials ASHA stops)."""
    import ray

    if ray.is_initialized():
        return False
    kw = ray_init_kwargs(address, num_cpus=num_cpus, env_vars=env_vars, dashboard=dashboard,
                         log_to_driver=log_to_driver, logging_level=logging_level, oom_retries=oom_retries)
    local = kw["address"] == "local"
    if local and job_api_address(os.environ.get("RAY_ADDRESS")):
        # a job API address exported for `ray job submit`: the local Ray started here (and its workers,
        # which inherit this environment) must not read it as the cluster to join
        os.environ.pop("RAY_ADDRESS")
    port_var = None
    if local and pin_gcs_port:
        from ray.util import get_node_ip_address

        port = free_port("0.0.0.0")
        port_var = ray_internals.gcs_port_env_var()
        os.environ[port_var] = str(port)
        env = dict((kw["runtime_env"] or {}).get("env_vars") or {})
        env["RAY_ADDRESS"] = f"{get_node_ip_address()}:{port}"
        kw["runtime_env"] = {"env_vars": env}
    try:
        ray.init(**kw)
    finally:
        if port_var:
            os.environ.pop(port_var, None)
    if workdir is not None:
        link_ray_logs(workdir)
    return local


def link_ray_logs(workdir: str | Path) -> Path | None:
    """``<workdir>/logs/ray`` -> this Ray session's log folder (worker output, Ray's own chatter); None
    when attached to a remote cluster (its logs live there)."""
    logs = ray_internals.session_log_dir()
    if logs is None:
        return None
    link = Path(workdir) / "logs" / "ray"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(logs), target_is_directory=True)
    print(f"[convlstm-dist] Ray's logs (workers included): {link}", flush=True)
    return link


@contextmanager
def ray_session(address: str | None = None, **kwargs):
    """Ray for the ``with`` block, by :func:`start_or_join_ray` (same arguments); yields True if it
    started a local Ray. On leaving, a connection this block made is closed (a local Ray it started is
    shut down with it); a Ray that was already connected stays as it was."""
    import ray

    connected_here = not ray.is_initialized()
    started = start_or_join_ray(address, **kwargs)
    try:
        yield started
    finally:
        if connected_here and ray.is_initialized():
            ray.shutdown()
