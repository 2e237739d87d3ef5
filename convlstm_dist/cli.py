"""The ``convlstm-dist`` command: one subcommand per job (ingest, train, tune, evaluate, ...).

Every subcommand lives in a module listed in ``convlstm_dist.commands.COMMAND_MODULES``.
Errors a user can fix (:class:`convlstm_dist.errors.UserError`) print as one message and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from convlstm_dist import __version__
from convlstm_dist.commands import COMMAND_MODULES
from convlstm_dist.data.storage import cancel_pending_io
from convlstm_dist.errors import UserError

DESCRIPTION = """\
Distributed training of the ConvLSTM (Shi et al., NeurIPS 2015) for precipitation
nowcasting on Ray: radar files -> Zarr archive -> Ray Data -> Ray Train -> MLflow.

Start with `convlstm-dist demo` (ingests the shipped KNMI radar sample, trains on 2 local
Ray workers, logs to MLflow in ./workdir). Recipes live in pipelines/.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convlstm-dist",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"convlstm-dist {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for reports that record it
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"convlstm-dist: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convlstm-dist: interrupted", file=sys.stderr)
        return 130
    finally:
        # storage requests an error left in flight would print "Exception ignored" tracebacks at exit

        cancel_pending_io()


if __name__ == "__main__":
    sys.exit(main())
