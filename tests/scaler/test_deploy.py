"""Where the scaler runs: the systemd unit (golden + hostile input), the Kubernetes Deployment,
the local background process (a real process on loopback), and the import rule."""

from __future__ import annotations

import ast
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serveform.scaler.deploy import kubernetes_deployment, render_unit, scaler_argv, spawn_local, systemd_quote

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[2]


def test_unit_golden():
    unit = render_unit(stack="prod")
    golden = DATA / "serveform-scaler.service.golden"
    if os.environ.get("SERVEFORM_UPDATE_GOLDEN"):
        golden.write_text(unit)
    assert unit == golden.read_text()


def _systemd_words(line: str) -> list[str]:
    """Split an Exec line as systemd does for our quoting (double quotes, backslash escapes, %% and $$)."""
    words = shlex.split(line, posix=True)
    return [w.replace("%%", "%").replace("$$", "$") for w in words]


def test_unit_hostile_values_stay_one_word():
    nasty_url = 'http://127.0.0.1:1/m?x=$y%z&q="a b"\\'
    unit = render_unit(stack="prod", metrics_url=nasty_url)
    exec_line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    words = _systemd_words(exec_line[len("ExecStart="):])
    assert words[:6] == ["/opt/serveform/venv/bin/python", "-m", "serveform.scaler", "run", "--stack", "prod"]
    assert words[words.index("--metrics-url") + 1] == nasty_url
    # Directives without quoting take only plain names and paths.
    for bad in ('/opt/a b', "relative/dir", "/opt/$HOME", "/opt/%i", '/opt/"x"'):
        with pytest.raises(ValueError, match="absolute path"):
            render_unit(stack="prod", project_dir=bad)
    with pytest.raises(ValueError, match="letters, digits"):
        render_unit(stack="prod", user="root\nExecStartPre=/bin/evil")
    # Every `$` and `%` in a value is escaped, so systemd expands nothing we did not write.
    for line in unit.splitlines():
        if line.startswith(("ExecStart=", "WorkingDirectory=", "Environment=")):
            assert not re.search(r"(?<![%$])[%$](?![%$])", line.split("=", 1)[1].replace("%%", "").replace("$$", "")), line
    with pytest.raises(ValueError):
        render_unit(stack="prod\nExecStartPre=/bin/evil")
    with pytest.raises(ValueError, match="line breaks"):
        systemd_quote("a\nb")


def test_systemd_quote():
    assert systemd_quote("plain") == '"plain"'
    assert systemd_quote('q"b\\%$') == '"q\\"b\\\\%%$$"'


def test_kubernetes_deployment_manifest():
    manifest = kubernetes_deployment(
        stack="prod", namespace="serve", image="ghcr.io/acme/serveform:0.1.0", metrics_url="http://gateway-metrics:9180/metrics"
    )
    assert manifest["kind"] == "Deployment" and manifest["apiVersion"] == "apps/v1"
    spec = manifest["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"][:6] == ["python", "-m", "serveform.scaler", "run", "--stack", "prod"]
    assert container["command"][container["command"].index("--metrics-url") + 1] == "http://gateway-metrics:9180/metrics"
    # Loopback only (issue 16): nothing outside the pod reaches the scaler; the probes run inside it.
    assert container["command"][container["command"].index("--listen") + 1] == "127.0.0.1:9465"
    assert "ports" not in container
    probe = container["livenessProbe"]["exec"]["command"]
    assert probe[:2] == ["python", "-c"] and "http://127.0.0.1:9465/healthz" in probe[2]
    assert container["envFrom"] == [{"secretRef": {"name": "scaler-env", "optional": True}}]
    # No secret value is ever inlined in the manifest.
    assert "PULUMI_CONFIG_PASSPHRASE" not in repr(manifest)
    assert pod["volumes"] == [{"name": "state", "emptyDir": {}}]
    pvc = kubernetes_deployment(stack="p", namespace="n", image="i", metrics_url="u", state_volume_claim="scaler-state")
    assert pvc["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "scaler-state"}


def test_scaler_argv():
    assert scaler_argv("dev", python="py", listen=None) == ["py", "-m", "serveform.scaler", "run", "--stack", "dev", "--listen", "off"]
    argv = scaler_argv("dev", python="py", interval_seconds=1, gateway_state_dir="/g", dry_run=True)
    assert argv == [
        "py", "-m", "serveform.scaler", "run", "--stack", "dev",
        "--gateway-state-dir", "/g", "--listen", "127.0.0.1:9465", "--interval", "1", "--dry-run",
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_spawn_local_runs_a_real_scaler_process(tmp_path):
    project = tmp_path / "project"
    (project / "stacks").mkdir(parents=True)
    (project / "chat.dstack.yml").write_text(
        "type: service\nname: chat\nimage: python:3.11\ncommands: [x]\nport: 8000\n"
        "replicas: 0..2\nscaling: {metric: rps, target: 1}\n"
    )
    (project / "stacks" / "Pulumi.dev.yaml").write_text(
        "config:\n  serveform:backend: local\n  serveform:services: [chat.dstack.yml]\n"
    )
    # The gateway's metrics endpoint, as a static file served by a real HTTP server on loopback.
    www = tmp_path / "www"
    www.mkdir()
    (www / "metrics").write_text('serveform_requests_total{service="chat",host="chat.localhost"} 5\n')
    caddy_port, listen_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(caddy_port), "--bind", "127.0.0.1", "--directory", str(www)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = tmp_path / "scaler.log"
    proc = spawn_local(
        "dev",
        project,
        metrics_url=f"http://127.0.0.1:{caddy_port}/metrics",
        listen=f"127.0.0.1:{listen_port}",
        interval_seconds=0.2,
        log_path=log,
        dry_run=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{listen_port}/healthz", timeout=1)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert r.json()["services"] == 1
        metrics = httpx.get(f"http://127.0.0.1:{listen_port}/metrics", timeout=5).text
        assert 'serveform_scaler_desired_replicas{service="chat"} 0' in metrics
        assert os.getsid(proc.pid) == proc.pid  # its own session: outlives the caller's terminal
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        server.terminate()
        server.wait(10)
    assert code == 0
    text = log.read_text()
    assert "watching 1 service(s) of stack dev: chat (chat.localhost, 0..2) [dry run]" in text
    # The dry run left the real state alone.
    assert not (project / ".serveform" / "scaler" / "dev" / "scaler-state.json").exists()


def _imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = path.relative_to(ROOT).with_suffix("").parts[: -node.level]
                base = ".".join(("serveform",) + parts + ((base,) if base else ()))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_the_scaler_never_imports_components():
    # Statically, every import statement (also those inside functions) ...
    for path in sorted((ROOT / "scaler").rglob("*.py")):
        bad = {name for name in _imports_of(path) if name.startswith("serveform.components") or name == "components"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    # ... and at run time, loading every scaler module and the modules they load lazily.
    code = (
        "import sys, serveform.scaler as s, serveform.scaler.commands, serveform.scaler.__main__\n"
        "import serveform.scaler.daemon as d, serveform.scaler.applier as a\n"
        "from serveform.stacks import engine\n"
        "import serveform.translator, serveform.gateway.state\n"
        "bad = sorted(m for m in sys.modules if m.startswith('serveform.components'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
