"""`python -m serveform.image VERB …`: the image commands without the rest of the CLI's imports
(tools/k8s-local.sh calls them on every start)."""

import argparse
import sys

from .commands import add_parsers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serveform.image")
    add_parsers(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(["image", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
