"""``lambda-hat``: the command-line entry point.

Each sub-command lives in the module named for its stage; that module exposes
``add_cli(subparsers)`` which registers its parser and sets ``func`` to a handler taking the
parsed arguments and returning an exit code. Exit code 2 means bad input (nothing was done).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lambda_hat.log import setup_logging
from lambda_hat.schema import ConfigError

_COMMAND_MODULES = ["lambda_hat.reference", "lambda_hat.runner", "lambda_hat.plots"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lambda-hat", description="Local learning coefficient estimation (lambda_hat)."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
