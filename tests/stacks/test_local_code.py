"""The service's code on the local backend, for real: a service whose command runs a file of its
repository serves it (with a `files` mapping), an unchanged tree changes nothing, and a code change
rolls the replica onto the new code. Real engine, real processes, real gateway."""

from __future__ import annotations

import json
import os
import subprocess

SERVER = """\
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = (Path("version.txt").read_text().strip() + " " + Path("greeting.txt").read_text().strip()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

SERVICE = """\
type: service
name: chat
working_dir: app
commands:
  - python server.py
port: 8000
files:
  - ../extra/greeting.txt:greeting.txt
probes:
  - type: http
    url: /health
    interval: 1s
replicas: 1
"""


def _git(root, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, env=env)


def _summary(output: str) -> dict[str, int]:
    """The `{"create": n, "same": m, ...}` line `serveform up` prints last."""
    line = [l for l in output.splitlines() if l.startswith("serveform ")][-1]
    return json.loads(line[line.index("{") :])


def _body(project) -> str:
    endpoints = project.endpoints()
    with project.client("chat.localhost", token=endpoints["token"], ca_cert=endpoints["gateway"]["ca_cert"]) as client:
        return client.get("/").text


def test_a_command_that_runs_a_repository_file_serves_and_a_code_change_rolls_it(local_project):
    root = local_project.root
    (root / "app").mkdir()
    (root / "app" / "server.py").write_text(SERVER)
    (root / "app" / "version.txt").write_text("v1\n")
    (root / ".gitignore").write_text(".serveform/\n")
    (root.parent / "extra").mkdir()
    (root.parent / "extra" / "greeting.txt").write_text("hello from files\n")
    local_project.write_service(text=SERVICE)
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "service")

    local_project.ok(local_project.serveform("up", "--yes"))
    local_project.wait_for(lambda: _body(local_project) == "v1 hello from files", 60, "the replica to serve its repository's file")
    (replica,) = local_project.replicas().values()
    code_dirs = sorted(p.name for p in (local_project.state_dir / "code").iterdir())
    assert len(code_dirs) == 1 and code_dirs[0].startswith("chat-")

    before = local_project.replicas()
    summary = _summary(local_project.ok(local_project.serveform("up", "--yes")).stdout)
    # An unchanged tree: the same archive, nothing changes ("read": the last deployment's counts).
    assert set(summary) == {"same", "read"}, summary
    assert local_project.replicas() == before

    (root / "app" / "version.txt").write_text("v2\n")  # a local change, not committed: shipped too
    preview = local_project.ok(local_project.serveform("preview")).stdout
    assert "chat-code" in preview and "chat-replica-0" in preview
    summary = _summary(local_project.ok(local_project.serveform("up", "--yes")).stdout)
    assert summary.get("replace") == 2, summary  # the code and the replica running it
    local_project.wait_for(lambda: _body(local_project) == "v2 hello from files", 60, "the replica to serve the new code")
    (rolled,) = local_project.replicas().values()
    assert rolled["pid"] != replica["pid"]
    assert sorted(p.name for p in (local_project.state_dir / "code").iterdir()) != code_dirs  # the old tree is gone

    local_project.ok(local_project.serveform("destroy", "--yes"))
    assert not (root / ".serveform").exists()
