"""A tiny HTTP server for the local backend's tests: answers every GET with JSON of its environment.

Run as `python envserver.py --port N [--cwd-file]`; it prints the environment variables tests ask
about (`?names=A,B`), its working directory and its pid.
"""

from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's spelling
        query = parse_qs(urlparse(self.path).query)
        names = query.get("names", [""])[0].split(",")
        body = json.dumps({"env": {n: os.environ.get(n) for n in names if n}, "cwd": os.getcwd(), "pid": os.getpid()})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    print(f"envserver listening on {args.port}", flush=True)
    HTTPServer(("127.0.0.1", args.port), _Handler).serve_forever()


if __name__ == "__main__":
    main()
