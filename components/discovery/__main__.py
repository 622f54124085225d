"""`python -m serveform.components.discovery --config FILE --state-dir DIR` (one round)."""

from __future__ import annotations

import argparse
import logging
import sys

from . import discover, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serveform.components.discovery", description=__doc__)
    parser.add_argument("--config", required=True, help="discovery.json written by the gateway's cloud-init")
    parser.add_argument("--state-dir", required=True, help="the gateway's state directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s", stream=sys.stderr)
    failed = discover(load_config(args.config), args.state_dir)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
