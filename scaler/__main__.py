"""`python -m serveform.scaler run|replay ...`: the scaler's own entry point (units, pods, local stack)."""

from __future__ import annotations

import argparse
import sys

from .commands import add_scaler_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serveform.scaler", description="serveform's autoscaler")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    add_scaler_commands(parser.add_subparsers(dest="scaler_command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # no traceback for users unless --debug
        if args.debug:
            raise
        from serveform.cli import describe  # never an empty message (MemoryError, bare KeyError)

        print(f"serveform scaler: error: {describe(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
