"""What the GCP and Azure gateway boot tests share: the cloud stub, the replica stand-in, HTTPS checks.

- `Stub` runs `_cloud_stub.py` (GCP or Azure) on the veth's host side, serving a config the test
  writes (token, objects, secrets, replica addresses), and reads back its call log.
- `Replica` is the project's chat server on the replica's address (a host-side address of the veth).
- `https` / `wait_https` GET a path through the gateway on the container's address, trusting the
  gateway's internal CA and sending the service's host name for TLS and routing.
- `booted` is one boot of a gateway's user data with its stub (and a replica), everything removed
  on the way out.
- `render_gateway` runs a cloud's stack program under Pulumi's mocks with the test's settings;
  `check_*` are the assertions both clouds make of a booted gateway.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from _vmboot import ROOT, Network, Vm, free_port, stop_group, wait_port

import _pulumi_harness

TOKEN = "boot-test-token-0123456789abcdef0123456789abcdef"
PASSPHRASE = "boot-test-passphrase"
DOMAIN = "ai.example.com"
SERVEFORM_UNITS = ["serveform-gateway.service", "serveform-discovery.timer", "serveform-scaler.service"]
# What the scaler's `up` on the gateway reads from the deploying environment (a secret of the stack).
SCALER_ENV = {"PULUMI_BACKEND_URL": "file:///var/lib/serveform-scaler/state", "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE}


class Stub:
    """`_cloud_stub.py CLOUD` on ``host`` with ``config``; `calls()` is what it answered, in order."""

    def __init__(self, cloud: str, config: dict, host: str, folder: Path) -> None:
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.host = host
        self.log = folder / f"{cloud}-calls.log"
        self.log.write_text("")
        config_file = folder / f"{cloud}-stub.json"
        config_file.write_text(json.dumps(config))
        self._out = open(folder / f"{cloud}-stub.out", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_cloud_stub.py")), cloud, str(config_file), str(self.log), host, str(self.port)],
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_port(host, self.port)
        except BaseException:
            self.close()
            raise

    def calls(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line]

    def wait_for_call(self, fragment: str, timeout: float = 60) -> None:
        """Until a call containing ``fragment`` was made (discovery's first round follows cloud-init)."""
        deadline = time.monotonic() + timeout
        while not any(fragment in c for c in self.calls()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no call with {fragment!r} within {timeout} s: {self.calls()}")
            time.sleep(0.5)

    def close(self) -> None:
        stop_group(self.proc)
        self._out.close()


class Replica:
    """The project's chat server on the replica's address (the host side of the veth)."""

    def __init__(self, address: str, port: int, folder: Path) -> None:
        self.log = open(folder / "replica.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "stacks/examples/chat_server.py"), "--host", address, "--port", str(port), "--model", "chat-small"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_port(address, port)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def https(vm: Vm, net: Network, host: str, path: str, token: str | None) -> tuple[int, bytes]:
    """GET https://HOST/PATH at the container's address (no DNS here), trusting the gateway's internal CA."""
    status = json.loads(vm.sh("cat /var/lib/serveform/gateway/status.json", check=True).stdout)
    ca = (vm.root / status["ca_cert"].lstrip("/")).read_text()
    context = ssl.create_default_context(cadata=ca)
    connection = http.client.HTTPSConnection(net.guest_ip, 443, context=context, timeout=30)
    connection.sock = context.wrap_socket(socket.create_connection((net.guest_ip, 443), timeout=30), server_hostname=host)
    headers = {"Host": host, **({"Authorization": f"Bearer {token}"} if token else {})}
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body


def wait_https(vm: Vm, net: Network, host: str, path: str, token: str, timeout: float = 120) -> int:
    """The first 200 within ``timeout`` seconds, else the last status seen (0: no answer)."""
    deadline = time.monotonic() + timeout
    code = 0
    while time.monotonic() < deadline:
        try:
            code, _ = https(vm, net, host, path, token)
            if code == 200:
                return code
        except (OSError, json.JSONDecodeError, KeyError, subprocess.CalledProcessError):
            pass
        time.sleep(1)
    return code


# The replica stand-in's address: the 10th of the veth's subnet (the 1st is the host side, the 2nd the VM).
REPLICA_HOST_INDEX = 9


@contextmanager
def booted(
    cloud: str, name: str, root: str, folder: Path, user_data: bytes, *,
    config: Callable[[str], dict], environment: Callable[[Stub], dict[str, str]], replica_port: int | None,
) -> Iterator[dict]:
    """Boot ``user_data`` in a fresh network namespace with the cloud's stub (``config(replica
    address)``, the container's ``environment(stub)`` drop-in) and, given a port, the chat server
    as the replica; yields the parts and cloud-init's final status and seconds."""
    net = Network.create(name)
    stub = replica = vm = None
    try:
        address = net.add_host_address(REPLICA_HOST_INDEX)
        stub = Stub(cloud, config(address), net.host_ip, folder)
        if replica_port is not None:
            replica = Replica(address, replica_port, folder)
        vm = Vm(name, root, folder, net)
        vm.seed(user_data, instance_id=f"{cloud}-boot-{name}", environment=environment(stub))
        vm.boot()
        status, seconds = vm.wait_cloud_init()
        yield {"vm": vm, "stub": stub, "net": net, "status": status, "seconds": seconds, "replica": address}
    finally:
        for part in (vm, replica, stub):
            if part is not None:
                part.close()
        net.close()


def reboot_and_serve(vm: Vm, net: Network, host: str, token: str, units: list[str]) -> float:
    """Power the container off and boot it again; the seconds until every unit is active and HTTPS answers 200."""
    vm.stop()
    assert vm.proc is not None and vm.proc.returncode is not None
    vm.boot()
    t0 = time.monotonic()
    states = vm.wait_active(units, timeout=180)
    assert states == {u: "active" for u in units}, vm.sh("journalctl -b -u 'serveform-*' --no-pager | tail -40").stdout
    assert wait_https(vm, net, host, "/health", token) == 200
    return time.monotonic() - t0


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def render_gateway(cloud: str, deploy: Callable) -> tuple[dict, list, object]:
    """The ``cloud`` stack's config, plans and recorded resources, rendered under Pulumi's mocks
    with the internal CA (no DNS here) and the test's own token; ``deploy(settings, plans)`` is
    the backend's program."""
    from serveform.components.program import compile_plans
    from serveform.stacks.settings import StackSettings

    config = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{cloud}.yaml").read_text())["config"]
    config["serveform:gateway"] = {"tls": "internal"}
    config["serveform:tokens"] = [TOKEN]
    settings = StackSettings.from_config(config, stack=cloud, project_dir=str(ROOT))
    plans = compile_plans(settings)
    with _environ(SCALER_ENV):
        recording = _pulumi_harness.run_program(lambda: deploy(settings, plans), stack=cloud)
    return config, plans, recording


def check_units_active(gateway: dict) -> None:
    vm = gateway["vm"]
    assert gateway["status"] == "done", vm.sh("cloud-init status --long; tail -50 /var/log/cloud-init-output.log").stdout
    states = vm.wait_active(SERVEFORM_UNITS)
    assert states == {u: "active" for u in SERVEFORM_UNITS}, vm.sh("journalctl -u 'serveform-*' --no-pager | tail -60").stdout


def check_serves_the_replica(gateway: dict) -> float:
    """401 without the token, 200 with it, from the replica discovery published; the seconds to the first 200."""
    vm, net, host = gateway["vm"], gateway["net"], f"chat.{DOMAIN}"
    t0 = time.monotonic()
    assert wait_https(vm, net, host, "/health", TOKEN) == 200, vm.sh("journalctl -u 'serveform-*' --no-pager | tail -40").stdout
    seconds = time.monotonic() - t0
    assert https(vm, net, host, "/health", None)[0] == 401
    code, body = https(vm, net, host, "/v1/models", TOKEN)
    assert code == 200 and b"chat-small" in body
    assert gateway["replica"] in vm.sh("cat /var/lib/serveform/gateway/replicas/*.json 2>/dev/null").stdout
    return seconds


def check_tampered_boot(vm: Vm, status: str, user_data: str) -> None:
    """cloud-init failed, with exactly one `serveform:` line on the console naming the caddy artifact's
    digests, and nothing of the gateway installed or running."""
    assert status == "error"
    expected = re.search(r"serveform-fetch artifact caddy (\S+) ", user_data).group(1)
    line = f"serveform: artifact caddy: sha256 mismatch (expected {expected}, got {hashlib.sha256(b'tampered').hexdigest()})"
    # cloud-final's output goes to `journal+console` (the serial port on GCE, the serial console
    # on Azure, which boot diagnostics show); the journal holds what the console was sent.
    console = vm.sh("journalctl -b -u cloud-final.service -o cat --no-pager", check=True).stdout
    assert [entry for entry in console.splitlines() if entry.startswith("serveform:")] == [line], console[-3000:]
    assert vm.sh("test -e /usr/local/bin/caddy || echo absent").stdout.strip() == "absent"
    assert vm.sh("systemctl is-active serveform-gateway.service").stdout.strip() != "active"
