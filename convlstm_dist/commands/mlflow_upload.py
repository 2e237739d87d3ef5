"""`convlstm-dist mlflow-upload`: send what a run kept in its workdir while MLflow was away."""

from __future__ import annotations

import argparse
from convlstm_dist.tracking.outbox import upload_outbox

HELP = """\
A training run whose MLflow tracking server went away and did not come back before the end of
the run (tracking.outage_wait_s) keeps its metrics, report files and model in
<workdir>/mlflow-outbox/<run>.json and prints this command. Once the server answers again, it
sends all of it to the same MLflow run (epochs the run already has are not sent twice), registers
the model, and renames the file to <run>.uploaded.json.

example:
  convlstm-dist mlflow-upload workdir/mlflow-outbox/radar-smoke.json
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("mlflow-upload", help="upload a run's metrics and model kept while MLflow was away",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outbox", metavar="FILE", help="<workdir>/mlflow-outbox/<run>.json")
    p.add_argument("--tracking-uri", metavar="URI", default=None,
                   help="the tracking server (default: the one the run used)")
    p.set_defaults(func=run_upload)


def run_upload(args) -> int:
    upload_outbox(args.outbox, args.tracking_uri, say=lambda line: print(line, flush=True))
    return 0
