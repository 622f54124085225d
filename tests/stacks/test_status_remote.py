"""`status` and `logs` for VM stacks (aws / gcp / azure), which cannot be deployed on this machine.

The stack outputs and settings are what a deployed VM stack has (`components._cloud.register`
exports them); the gateway address points at a loopback port nobody listens on, so the status
must name the gateway as unreachable and why, and still show everything the outputs know. The
log commands are the exact lines a person pastes, built from the same outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from serveform.components.local._process import free_port
from serveform.stacks.logs import LogsError, cloud_commands
from serveform.stacks.settings import StackSettings
from serveform.stacks.status import collect, render

SERVICE = "type: service\nname: chat\nimage: vllm/vllm-openai:v0.6.0\nport: 8000\nresources:\n  gpu: 1\nreplicas: 1..4\nscaling:\n  metric: rps\n  target: 5\n  window: 30s\n"


def _outputs(backend: str) -> dict:
    return {
        "domain": "models.example.com",
        "gateway_address": "127.0.0.1",
        "gateway_dns_name": None,
        "services": [{
            "name": "chat", "url": "https://chat.models.example.com", "auth": True, "model": None, "model_endpoint": None,
            "group": "serveform-prod-chat", "replicas": {"min": 1, "max": 4, "count": 2},
        }],
    }


def _config(backend: str, https_port: int, gateway: dict | None = None) -> dict:
    return {
        "serveform:backend": backend,
        "serveform:domain": "models.example.com",
        "serveform:services": ["chat.dstack.yml"],
        "serveform:gateway": gateway or {"https_port": https_port},
        "serveform:tokens": ["a-token-0123456789abcdef0123456789abcdef"],
        "serveform:aws": {"region": "eu-west-1"},
        "serveform:gcp": {"project": "my-proj", "region": "europe-west4", "zone": "europe-west4-a"},
        "serveform:azure": {"resource_group": "rg-prod"},
    }


class _Engine:
    """What `collect` reads of an Engine: outputs, decrypted config, the stack's history."""

    def __init__(self, project: Path, backend: str, https_port: int, gateway: dict | None = None) -> None:
        self.stack, self.project = "prod", project
        self._backend, self._port, self._gateway = backend, https_port, gateway
        ended = datetime(2026, 12, 1, 10, 0, 5, tzinfo=timezone.utc)
        update = SimpleNamespace(kind="update", result="succeeded", start_time=datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc), end_time=ended)
        self.stack_obj = SimpleNamespace(history=lambda page_size, page: [update])

    def outputs(self) -> dict:
        return _outputs(self._backend)

    def config(self) -> dict:
        return _config(self._backend, self._port, self._gateway)


@pytest.mark.parametrize("backend", ["aws", "gcp", "azure"])
def test_vm_status_names_an_unreachable_gateway_and_keeps_what_the_outputs_say(tmp_path, backend):
    (tmp_path / "chat.dstack.yml").write_text(SERVICE)
    port = free_port()  # nobody listens here: the "VM" is down
    status = collect(_Engine(tmp_path, backend, port))
    assert status["backend"] == backend
    assert status["gateway"]["address"] == f"127.0.0.1:{port}" and status["gateway"]["reachable"] is False
    assert status["gateway"]["error"].startswith(f"unreachable: https://gateway.models.example.com at 127.0.0.1:{port}: ")
    assert "refused" in status["gateway"]["error"].lower()
    assert "gateway VM" in status["scaler"]["error"]
    assert status["last_update"] == {"kind": "update", "result": "succeeded", "started_at": "2026-12-01T10:00:00Z", "ended_at": "2026-12-01T10:00:05Z"}
    (chat,) = status["services"]
    assert chat["replicas"] == {"min": 1, "max": 4, "desired": 2, "published": None, "ready": None, "restarts": None}
    assert chat["window_seconds"] == 30 and chat["rps"] is None
    json.dumps(status)  # the JSON shape is plain data
    table = render(status)
    assert "gateway status unreachable: https://gateway.models.example.com" in table
    row = next(line for line in table.splitlines() if line.startswith("chat "))
    assert row.split()[2:8] == ["-", "2", "[1..4]", "-", "-", "-"], row


def test_vm_status_reads_the_gateways_readiness_view_with_the_stacks_token(tmp_path):
    """A gateway that answers (plain HTTP here, `tls: off`): published and ready come from it."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = []

    class Gateway(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's spelling
            seen.append((self.path, self.headers["Host"], self.headers["Authorization"]))
            body = json.dumps({"services": {"chat": {"published": ["10.0.1.5:8000", "10.0.1.6:8000"], "ready": ["10.0.1.5:8000"]}}})
            self.send_response(200 if self.headers["Authorization"] == "Bearer a-token-0123456789abcdef0123456789abcdef" else 401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    (tmp_path / "chat.dstack.yml").write_text(SERVICE)
    server = HTTPServer(("127.0.0.1", 0), Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        status = collect(_Engine(tmp_path, "gcp", 443, gateway={"tls": "off", "http_port": port, "allow_plain_http": True}))
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("/serveform/v1/status", "gateway.models.example.com", "Bearer a-token-0123456789abcdef0123456789abcdef")]
    assert status["gateway"] == {"address": f"127.0.0.1:{port}", "reachable": True, "error": None}
    (chat,) = status["services"]
    assert (chat["replicas"]["desired"], chat["replicas"]["published"], chat["replicas"]["ready"]) == (2, 2, 1)


def _settings(tmp_path: Path, backend: str) -> StackSettings:
    return StackSettings.from_config(_config(backend, 443), stack="prod", project_dir=tmp_path)


def test_aws_log_commands_find_the_instance_and_read_its_journal(tmp_path):
    gateway = "\n".join(cloud_commands(_settings(tmp_path, "aws"), _outputs("aws"), "gateway", None, follow=True))
    assert "Name=tag:serveform:stack,Values=prod Name=tag:serveform:role,Values=gateway" in gateway
    assert "aws ssm start-session --region eu-west-1" in gateway and "journalctl -u serveform-gateway.service -f" in gateway
    scaler = "\n".join(cloud_commands(_settings(tmp_path, "aws"), _outputs("aws"), "scaler", None, follow=False))
    assert "journalctl -u serveform-scaler.service -n 200 --no-pager" in scaler
    replica = "\n".join(cloud_commands(_settings(tmp_path, "aws"), _outputs("aws"), "chat", 1, follow=False))
    assert "--auto-scaling-group-names serveform-prod-chat --query 'AutoScalingGroups[0].Instances[1].InstanceId'" in replica
    assert "serveform-replica.service" in replica
    # Each line is shell a person can paste: it parses.
    for text in (gateway, scaler, replica):
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0, text


def test_gcp_and_azure_log_commands(tmp_path):
    gcp = "\n".join(cloud_commands(_settings(tmp_path, "gcp"), _outputs("gcp"), "chat", 0, follow=True))
    assert "gcloud compute instance-groups managed list-instances serveform-prod-chat --project my-proj --region europe-west4" in gcp
    assert 'gcloud compute ssh "$INSTANCE" --project my-proj --zone "$ZONE" -- sudo journalctl -u serveform-replica.service -f' in gcp
    azure = "\n".join(cloud_commands(_settings(tmp_path, "azure"), _outputs("azure"), "gateway", None, follow=False))
    assert "az vm run-command invoke -g rg-prod" in azure and "journalctl -u serveform-gateway.service" in azure
    for text in (gcp, azure):
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0, text
    with pytest.raises(LogsError, match="services: chat"):
        cloud_commands(_settings(tmp_path, "gcp"), _outputs("gcp"), "nosuch", None, follow=False)
