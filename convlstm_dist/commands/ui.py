"""`convlstm-dist ui`: serve the MLflow UI for the embedded tracking store of a workdir."""

from __future__ import annotations

import argparse

UI_HELP = """\
Start an MLflow server on 127.0.0.1 for the runs in DIR/mlflow.db (artifacts in DIR/mlartifacts)
and print its URL. It listens on loopback only; from another machine use an SSH tunnel
(ssh -L PORT:127.0.0.1:PORT host). Stop it with Ctrl-C.

Training runs log there when tracking.uri / MLFLOW_TRACKING_URI is the printed URL; with no
tracking URI they write sqlite:///DIR/mlflow.db directly, which this command then shows.

example:
  convlstm-dist ui --workdir workdir --port 5000
"""


def register(subparsers) -> None:
    from convlstm_dist.commands.common import add_workdir_arg

    p = subparsers.add_parser("ui", help="serve the MLflow UI for a workdir on 127.0.0.1",
                              description=UI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workdir_arg(p)
    p.add_argument("--port", type=int, default=None, metavar="P",
                   help="port on 127.0.0.1 (default: a free one)")
    p.set_defaults(func=run_ui)


def run_ui(args) -> int:
    from pathlib import Path

    from convlstm_dist.errors import UserError
    from convlstm_dist.tracking.server import MlflowServer

    if args.port is not None and not (0 < args.port < 65536):
        raise UserError(f"--port {args.port} is not a TCP port (1..65535)")
    workdir = Path(args.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {workdir} exists and is not a folder")
    workdir.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(workdir, port=args.port, log_path=workdir / "mlflow-server.log")
    print(f"starting MLflow server for {server.backend_store_uri} ...", flush=True)
    server.start()
    print(f"MLflow UI: {server.uri}   (log: {workdir / 'mlflow-server.log'}; Ctrl-C to stop)", flush=True)
    print(f"log runs to it with: export MLFLOW_TRACKING_URI={server.uri}", flush=True)
    try:
        rc = server.wait()
    except KeyboardInterrupt:
        rc = 0
    finally:
        server.stop()
    if rc not in (0, -2, -15):
        raise UserError(f"mlflow server exited with code {rc}; see {workdir / 'mlflow-server.log'}")
    return 0
