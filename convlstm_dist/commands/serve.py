"""`convlstm-dist serve`: serve a registered model with ``mlflow models serve`` on 127.0.0.1."""

from __future__ import annotations

import argparse
from convlstm_dist.addresses import missing_sqlite, resolve_tracking_uri
from convlstm_dist.commands.common import add_workdir_arg
from convlstm_dist.errors import UserError

SERVE_HELP = """\
Serve a model of the workdir's MLflow store (or --tracking-uri) with MLflow's own scoring server
(`mlflow models serve --env-manager local`) on 127.0.0.1. POST /invocations with the model's
serving_input_example.json: {"inputs": FRAMES, "params": {"leads": N}}, FRAMES the last in_len
frames in mm/h as a (frames, H, W) array; the answer is {"predictions": (leads, H, W) mm/h}.

example:
  convlstm-dist serve --model demo-knmi --workdir workdir --port 5001
  curl -s -X POST -H 'Content-Type: application/json' --data @serving_input_example.json \\
       http://127.0.0.1:5001/invocations
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a registered model over HTTP (mlflow models serve) on 127.0.0.1",
                              description=SERVE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN/model, or a registered name (its latest version)")
    add_workdir_arg(p)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else "
                                                        "sqlite:///DIR/mlflow.db)")
    p.add_argument("--port", type=int, default=5001, metavar="P", help="port on 127.0.0.1 (default 5001)")
    p.add_argument("--workers", type=int, default=1, help="scoring server processes (default 1)")
    p.set_defaults(func=run_serve)


def serve_argv(model: str, port: int, workers: int = 1) -> list[str]:
    """The ``mlflow models serve`` command line (run with this interpreter) for ``model``."""
    import sys

    ref = model if model.startswith(("models:/", "runs:/")) else f"models:/{model}/latest"
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", ref, "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]


def run_serve(args: argparse.Namespace) -> int:
    import os
    import sys
    from pathlib import Path

    uri = resolve_tracking_uri(args.tracking_uri, args.workdir)
    if missing_sqlite(uri):
        raise UserError(f"no MLflow database at {uri}: train a model first, or pass --workdir / --tracking-uri")
    argv = serve_argv(args.model, args.port, args.workers)
    # mlflow starts `uvicorn` from PATH: put this environment's bin/ first (a non-activated venv works)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    print(f"[serve] {argv[6]} from {uri} at http://127.0.0.1:{args.port}/invocations (Ctrl-C stops it)", flush=True)
    os.execve(sys.executable, argv, env)  # the server replaces this process: signals reach it directly
    return 0  # not reached
