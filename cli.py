"""The `serveform` command line: parse arguments, call the library, render.

Each package contributes its own subcommands through a `commands` module with one
function, ``add_parsers(subparsers)``, which registers parsers whose ``func`` default
takes the parsed namespace and returns an exit status. Command modules import their
heavy dependencies (Pulumi, aiohttp) inside ``func``, so `serveform validate` stays fast.

Exit status: 0 success, 1 failure of an operation, 2 bad input (usage, invalid service file
or stack config). No traceback is shown unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["describe", "main"]

_COMMAND_MODULES = (
    "serveform.translator.commands",  # compile, validate, schema
    "serveform.stacks.commands",  # preview, up, refresh, destroy, endpoints
    "serveform.stacks.review",  # plan --base
    "serveform.scaler.commands",  # scaler run | replay
    "serveform.image.commands",  # image build | ref | push | lock
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serveform", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a package that contributes no commands yet
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: no traceback for users
        if args.debug:
            raise
        print(f"serveform: error: {describe(exc)}", file=sys.stderr)
        return 1


def describe(exc: BaseException) -> str:
    """What went wrong, never empty: some exceptions (MemoryError, a bare KeyError) carry no text."""
    if isinstance(exc, MemoryError):
        return "out of memory (the input is too large; run again with --debug for where it happened)"
    text = str(exc).strip()
    if not text or (isinstance(exc, KeyError) and text in ("''", '""')):
        return f"unexpected {type(exc).__name__} with no message (run again with --debug for a traceback)"
    if isinstance(exc, KeyError):
        return f"unexpected missing key {text} (run again with --debug for a traceback)"
    return text


if __name__ == "__main__":
    sys.exit(main())
