"""The one module that reaches into Ray's private internals (``ray._private``).

Everything else uses public Ray APIs; ``tests/unit/test_layers.py`` keeps it that way. What lands here
has no public equivalent in the Ray version the project pins, and is imported lazily (Ray is heavy).

Every remaining use, checked against Ray 2.60.0 (``tests/faults/test_no_ray_internals.py`` checks that
this list matches the imports below and that each still works on the installed Ray):

========================================  ==================================  ==========================================
``ray._private`` name                     used by                             why there is no public door (Ray 2.60.0)
========================================  ==================================  ==========================================
``ray_constants.GCS_PORT_ENVIRONMENT_     :func:`gcs_port_env_var`            ``ray.init(address="local")`` has no GCS
VARIABLE``                                (``ray_session.py``, sweep)          port argument; only this variable fixes it
``worker.global_worker``                  :func:`session_log_dir`             no public API names the session's log
(``.node.get_session_dir_path()``)        (``ray_session.py``: logs)          folder of a local node
``state.state.get_max_resources_from_     :func:`autoscaler_max_resources`    the autoscaler's maximum cluster size has
cluster_config()``                        (``train/guards.py``)               no public getter; Ray Train's own worker-
                                                                              group check uses the same call
========================================  ==================================  ==========================================

No Ray file is edited: the corrupt-checkpoint fallback chooses its checkpoint from the project's own
manifest (``train/recovery.py``), not by rewriting the run snapshot Ray Train keeps for itself.
"""

from __future__ import annotations


def gcs_port_env_var() -> str:
    """The environment variable a local ``ray.init(address="local")`` reads for its GCS port.

    No public ``ray.init`` argument fixes that port; the sweep fixes it so that its workers, told
    ``RAY_ADDRESS``, find *this* cluster's state API even when other Ray instances run on the machine."""
    from ray._private import ray_constants

    return ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE


def session_log_dir() -> str | None:
    """This driver's Ray session log folder when it runs a local Ray node; None when attached to a
    remote cluster (its logs live there). No public API names the folder."""
    try:
        from ray._private.worker import global_worker

        return f"{global_worker.node.get_session_dir_path()}/logs"
    except Exception:  # noqa: BLE001 - no local node
        return None


def autoscaler_max_resources() -> dict | None:
    """The cluster's maximum resources as the autoscaler publishes them, or None (no autoscaler, or
    the private state API changed): then only the live cluster view is known."""
    try:
        from ray._private.state import state

        return state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - private API; the caller falls back to the live view
        return None
