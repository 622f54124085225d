"""`python -m serveform.gateway`: run a gateway, or render/check its config.

    python -m serveform.gateway run --state-dir DIR      Caddy + router + prober + DNS until SIGTERM
    python -m serveform.gateway render --state-dir DIR   print the Caddyfile DIR/gateway.json yields
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import GatewayConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serveform.gateway", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run the gateway until SIGTERM"), ("render", "print the Caddyfile of DIR/gateway.json")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--state-dir", required=True, help="the gateway's state directory (holds gateway.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.command == "run":
        from .supervisor import run

        return run(args.state_dir)
    from .render import render_caddyfile
    from .state import read_config

    try:
        config = read_config(args.state_dir)
        sys.stdout.write(render_caddyfile(config.settings, config.plans))
    except GatewayConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
