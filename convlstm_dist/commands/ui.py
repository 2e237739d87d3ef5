"""`convlstm-dist ui`: serve the MLflow UI for the embedded tracking store of a workdir."""

from __future__ import annotations

import argparse
import contextlib
import signal
from convlstm_dist.commands.common import add_workdir_arg
from convlstm_dist.errors import UserError
from convlstm_dist.tracking import MlflowServer

UI_HELP = """\
Start an MLflow server on 127.0.0.1 for the runs in DIR/mlflow.db (artifacts in DIR/mlartifacts)
and print its URL. It listens on loopback only; from another machine use an SSH tunnel
(ssh -L PORT:127.0.0.1:PORT host). Stop it with Ctrl-C (SIGTERM and SIGHUP stop the server too).

Training runs log there when tracking.uri / MLFLOW_TRACKING_URI is the printed URL; with no
tracking URI they write sqlite:///DIR/mlflow.db directly, which this command then shows.

example:
  convlstm-dist ui --workdir workdir --port 5000
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("ui", help="serve the MLflow UI for a workdir on 127.0.0.1",
                              description=UI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workdir_arg(p)
    p.add_argument("--port", type=int, default=None, metavar="P",
                   help="port on 127.0.0.1 (default: a free one)")
    p.set_defaults(func=run_ui)


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM / SIGHUP so that ``finally`` stops the MLflow server."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stop_signals(signums=(signal.SIGTERM, signal.SIGHUP)):
    """Turn ``signums`` into :class:`Terminated` while the block runs (main thread only).

    The MLflow server lives in its own process group (so Ctrl-C reaches only this process, which
    stops it); without this, SIGTERM or a closed terminal killed this process outright and left the
    server running. Yields ``stopping()``: after it is called (and after the first signal) further
    signals are ignored, so they cannot interrupt the server's stop.
    """
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Terminated(signum)

    def stopping():
        fired.append(None)

    previous = {}
    try:
        for s in signums:
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        pass
    try:
        yield stopping
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_ui(args) -> int:
    from pathlib import Path

    if args.port is not None and not (0 < args.port < 65536):
        raise UserError(f"--port {args.port} is not a TCP port (1..65535)")
    workdir = Path(args.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {workdir} exists and is not a folder")
    workdir.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(workdir, port=args.port, log_path=workdir / "mlflow-server.log")
    rc, signum = 0, None
    with stop_signals() as stopping:
        try:
            print(f"starting MLflow server for {server.backend_store_uri} ...", flush=True)
            server.start()  # a signal while it starts up: start() stops the server and re-raises
            print(f"MLflow UI: {server.uri}   (log: {workdir / 'mlflow-server.log'}; Ctrl-C to stop)", flush=True)
            print(f"log runs to it with: export MLFLOW_TRACKING_URI={server.uri}", flush=True)
            rc = server.wait()
        except KeyboardInterrupt:
            rc = 0
        except Terminated as t:
            signum = t.signum
        finally:
            stopping()
            server.stop()  # SIGTERM to the server's process group, SIGKILL after 10 s
    if signum is not None:
        print(f"stopped the MLflow server ({signal.Signals(signum).name})", flush=True)
        return 128 + signum
    if rc not in (0, -2, -15):
        raise UserError(f"mlflow server exited with code {rc}; see {workdir / 'mlflow-server.log'}")
    return 0
