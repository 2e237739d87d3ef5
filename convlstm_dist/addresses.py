"""Where the services are: the MLflow tracking URI (its default, whether its sqlite file exists) and free ports.

Standard library only, so every layer can use it: ``train`` and ``nowcast`` resolve the tracking
URI here, ``tracking/server.py`` and :mod:`convlstm_dist.ray_session` (a pinned GCS port) take
free ports from here.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"
LOOPBACK = "127.0.0.1"


def default_tracking_uri(workdir: str | Path = "workdir") -> str:
    """``sqlite:///<workdir>/mlflow.db``, the workdir made absolute."""
    return f"{SQLITE_PREFIX}{Path(workdir).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None = None, workdir: str | Path = "workdir") -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else :func:`default_tracking_uri`."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(workdir)


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for any other URI."""
    return Path(uri[len(SQLITE_PREFIX):]) if uri.startswith(SQLITE_PREFIX) else None


def missing_sqlite(uri: str) -> bool:
    """True when ``uri`` names a sqlite database file that does not exist (nothing was ever logged there)."""
    path = sqlite_file(uri)
    return path is not None and not path.exists()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
