"""Booting a VM's user data here: a Debian root in systemd-nspawn, its own network, moto for AWS.

- `prepare()` runs tools/vmboot/setup.sh (apt packages, the cached Debian root with systemd and
  cloud-init, moto) and returns what it printed.
- `Network` is a network namespace with a veth pair: the host side and the container's `host0`
  in one small subnet, nothing routed beyond it. The container reaches the host side only (moto,
  the replica stand-in), never the host's own network.
- `Moto` is moto's server mode bound to the host side's address, with a log of the calls.
- `Vm` is one container: an overlay of the cached root (the cached root stays read-only), the
  NoCloud seed, `systemd-nspawn --boot` in the namespace, the console captured to a file.
- `Lan` is a bridge with one namespace per VM on it (a VPC subnet: the gateway VM reaches the
  replica VM), moto and the registry on the bridge's host address.
- `Registry` is an OCI registry (go-containerregistry's, tools/vmboot/setup.sh) that the replica
  VM pulls the runtime image from.

Everything created is removed by `close()` (processes, mounts, the namespaces, veths and the
bridge); the fixtures call it on every path.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "tools" / "vmboot" / "setup.sh"
# cloud-init in the container is done ~35 s after start (FACTS.md); the gateway's install adds the
# artifacts' transfer and a pip install of the wheelhouse on a shared 2-core machine.
BOOT_TIMEOUT_SECONDS = 600
POLL_SECONDS = 1.0


def run(argv: list[str], *, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout, **kwargs)


def prepare() -> dict[str, str]:
    """tools/vmboot/setup.sh's KEY=VALUE lines (ROOT, REPLICA_ROOT, REGISTRY, MOTO_SERVER); it installs what is missing."""
    result = run(["bash", str(SETUP)], timeout=1800)
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = run(["ip", "-4", "-o", "addr"]).stdout + run(["ip", "-4", "-o", "route"]).stdout
    nets = []
    for word in out.split():
        if "/" in word and word[0].isdigit():
            try:
                nets.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                pass
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that no interface of this host uses."""
    used = _used_networks()
    for _ in range(200):
        subnet = ipaddress.ip_network(f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24")
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError("no free 10.x.y.0/24 for the boot test's network")


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM a process started in its own session, and its children; SIGKILL after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@dataclass
class Network:
    """A network namespace `name` with a veth: host side `vh-<suffix>`, container side `host0`."""

    name: str
    subnet: ipaddress.IPv4Network
    host_ip: str
    guest_ip: str
    veth: str
    _extra: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, name: str) -> Network:
        subnet = _free_subnet()
        hosts = list(subnet.hosts())
        net = cls(name=name, subnet=subnet, host_ip=str(hosts[0]), guest_ip=str(hosts[1]), veth=f"vh-{name[-12:]}")
        try:
            run(["ip", "netns", "add", name])
            run(["ip", "link", "add", net.veth, "type", "veth", "peer", "name", "host0", "netns", name])
            run(["ip", "addr", "add", f"{net.host_ip}/{subnet.prefixlen}", "dev", net.veth])
            run(["ip", "link", "set", net.veth, "up"])
            run(["ip", "-n", name, "link", "set", "lo", "up"])
            run(["ip", "-n", name, "addr", "add", f"{net.guest_ip}/{subnet.prefixlen}", "dev", "host0"])
            run(["ip", "-n", name, "link", "set", "host0", "up"])
        except BaseException:
            net.close()
            raise
        return net

    def add_host_address(self, index: int) -> str:
        """One more address on the host side (a replica stand-in listens there)."""
        address = str(list(self.subnet.hosts())[index])
        run(["ip", "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", self.veth])
        self._extra.append(address)
        return address

    def close(self) -> None:
        # Deleting the namespace deletes host0, and with it the host side of the pair.
        run(["ip", "netns", "del", self.name], check=False)
        run(["ip", "link", "del", self.veth], check=False)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{host}:{port} did not answer within {timeout} s")


class Moto:
    """moto's server mode on ``host`` (the veth's host side) with a call log."""

    def __init__(self, moto_server: str, host: str, folder: Path) -> None:
        python = self.python = str(Path(moto_server).with_name("python"))
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log = folder / "moto-calls.log"
        self.log.write_text("")
        self._out = open(folder / "moto.out", "w")
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).with_name("_moto_logged.py")), host, str(self.port), str(self.log)],
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_port(host, self.port)
        except BaseException:
            self.close()
            raise

    def call(self, *calls: tuple[str, str, dict]) -> list[dict]:
        """boto3 calls against this moto (run by moto's interpreter: the project's venv has no boto3)."""
        result = run(
            [self.python, str(Path(__file__).with_name("_moto_client.py"))],
            input=json.dumps({"url": self.url, "calls": [list(c) for c in calls]}), timeout=300,
        )
        return json.loads(result.stdout)

    def calls(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line]

    def close(self) -> None:
        stop_group(self.proc)
        self._out.close()


def loopback_moto(folder: Path) -> Moto:
    """moto (installed by tools/k8s/build.sh, which the setup runs) on 127.0.0.1, for tests without a VM."""
    run([str(ROOT / "tools/k8s/build.sh"), "moto"], timeout=900)
    paths = dict(line.split("=", 1) for line in run([str(ROOT / "tools/k8s/build.sh"), "paths"]).stdout.splitlines() if "=" in line)
    return Moto(paths["MOTO_SERVER"], "127.0.0.1", folder)


class Vm:
    """One booted container of the cached root, its changes in an overlay under ``folder``."""

    def __init__(self, name: str, base: str, folder: Path, network: Network) -> None:
        self.name = name
        self.network = network
        self.folder = folder
        self.root = folder / "root"
        self.upper = folder / "upper"
        for path in (self.root, self.upper, folder / "work"):
            path.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={base},upperdir={self.upper},workdir={folder / 'work'}", str(self.root)])
        self.mounted = True
        self.proc: subprocess.Popen | None = None
        self.console = folder / "console.log"
        self.boots = 0
        # `--bind=HOST:GUEST` mounts for the container (e.g. a container engine's storage, which
        # overlayfs refuses on the overlay root).
        self.binds: list[str] = []
        # More capabilities than nspawn's default set (a VM's root has them all), e.g. CAP_NET_ADMIN
        # for a container engine's bridge and iptables in the VM's own network namespace.
        self.capabilities: list[str] = []
        # Environment of systemd-nspawn itself (its documented switches, e.g. SYSTEMD_NSPAWN_API_VFS_WRITABLE).
        self.nspawn_env: dict[str, str] = {}

    def seed(self, user_data: bytes, *, instance_id: str, environment: dict[str, str]) -> None:
        """The NoCloud seed, and the test's knobs as a drop-in for every service (AWS_ENDPOINT_URL...)."""
        seed = self.root / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True, exist_ok=True)
        (seed / "meta-data").write_text(f"instance-id: {instance_id}\nlocal-hostname: {self.name}\n")
        (seed / "user-data").write_bytes(user_data)
        dropin = self.root / "etc/systemd/system/service.d"
        dropin.mkdir(parents=True, exist_ok=True)
        lines = "".join(f"Environment={json.dumps(f'{k}={v}')}\n" for k, v in sorted(environment.items()))
        (dropin / "50-serveform-boot-test.conf").write_text("# The boot test's endpoints (moto): never in production user data.\n[Service]\n" + lines)
        # The route out of the subnet goes nowhere: the only peer is the host side.
        run(["ip", "-n", self.network.name, "route", "replace", "default", "via", self.network.host_ip])

    def boot(self) -> None:
        self.boots += 1
        out = open(self.console, "a")
        out.write(f"\n--- boot {self.boots} ---\n")
        out.flush()
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.root), "--boot", "--register=no", "--keep-unit", "-M", self.name,
             "--console=pipe", f"--network-namespace-path=/run/netns/{self.network.name}", *(f"--bind={b}" for b in self.binds),
             *([f"--capability={','.join(self.capabilities)}"] if self.capabilities else [])],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **self.nspawn_env},
        )
        out.close()
        self.started = time.monotonic()

    def leader(self) -> int:
        """PID of the container's init (systemd), found under nspawn's process."""
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for child in _descendants(self.proc.pid):
                try:
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return child
                except OSError:
                    continue
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.proc.returncode}:\n{self.console_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError("the container's systemd did not start")

    def sh(self, command: str, *, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``command`` with /bin/sh inside the container (all its namespaces)."""
        argv = ["nsenter", "-t", str(self.leader()), "-m", "-u", "-i", "-p", "-n", "--", "/bin/sh", "-c", command]
        return run(argv, check=check, timeout=timeout)

    def wait_cloud_init(self, timeout: float = BOOT_TIMEOUT_SECONDS) -> tuple[str, float]:
        """cloud-init's final status (`done` or `error`) and the seconds since start."""
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the container stopped ({self.proc.returncode}):\n{self.console_text()[-3000:]}")
            # result.json appears when the final stage has ended, whatever its outcome.
            result = self.sh("test -e /var/lib/cloud/data/result.json && cloud-init status 2>/dev/null | head -1")
            status = result.stdout.strip().rsplit(":", 1)[-1].strip()
            if status:
                return status, time.monotonic() - self.started
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"cloud-init not done after {timeout} s (last status {status!r}):\n{self.console_text()[-3000:]}")

    def wait_active(self, units: list[str], timeout: float = 120) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            out = self.sh("systemctl is-active " + " ".join(units)).stdout.split()
            states = dict(zip(units, out))
            if all(s == "active" for s in states.values()) and len(states) == len(units):
                return states
            time.sleep(POLL_SECONDS)
        return states

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def stop(self) -> None:
        """Power the container off (its systemd stops every unit), else kill nspawn."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.sh("systemctl poweroff", timeout=30)
            self.proc.wait(90)
        except (subprocess.TimeoutExpired, RuntimeError, TimeoutError, OSError):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(30)

    def close(self) -> None:
        self.stop()
        if self.mounted:
            run(["umount", "-R", str(self.root)], check=False)
            if run(["mountpoint", "-q", str(self.root)], check=False).returncode == 0:
                run(["umount", "-l", str(self.root)], check=False)
            self.mounted = False
        shutil.rmtree(self.folder / "upper", ignore_errors=True)
        shutil.rmtree(self.folder / "work", ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            queue.append(child)
    return found


class Lan:
    """A bridge on the host (its address: moto, the registry) with one namespace per VM on it:
    the gateway reaches the replica as it would in a VPC subnet, and nothing else."""

    def __init__(self, name: str) -> None:
        subnet = _free_subnet()
        self.subnet = subnet
        self.host_ip = str(list(subnet.hosts())[0])
        self.guest_ip = ""  # each VM has its own (`attach`)
        self.bridge = f"br-{name[-12:]}"
        self.members: list[Network] = []
        try:
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{self.host_ip}/{subnet.prefixlen}", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
        except BaseException:
            self.close()
            raise

    def attach(self, name: str, guest_ip: str) -> Network:
        """A namespace `name` whose `host0` has ``guest_ip`` on the bridge."""
        net = Network(name=name, subnet=self.subnet, host_ip=self.host_ip, guest_ip=guest_ip, veth=f"vh-{name[-12:]}")
        self.members.append(net)
        run(["ip", "netns", "add", name])
        run(["ip", "link", "add", net.veth, "type", "veth", "peer", "name", "host0", "netns", name])
        run(["ip", "link", "set", net.veth, "master", self.bridge])
        run(["ip", "link", "set", net.veth, "up"])
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        run(["ip", "-n", name, "addr", "add", f"{guest_ip}/{self.subnet.prefixlen}", "dev", "host0"])
        run(["ip", "-n", name, "link", "set", "host0", "up"])
        return net

    def close(self) -> None:
        for net in self.members:
            net.close()
        run(["ip", "link", "del", self.bridge], check=False)


_FORWARDER = """
import asyncio, sys
listen_host, listen_port, target_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
async def handle(reader, writer):
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
async def main():
    server = await asyncio.start_server(handle, listen_host, listen_port)
    await server.serve_forever()
asyncio.run(main())
"""


class Registry:
    """An OCI registry (go-containerregistry's) on loopback, forwarded to ``host`` (it binds loopback only)."""

    def __init__(self, binary: str, host: str, folder: Path) -> None:
        self._out = open(folder / "registry.log", "w")
        self.local_port = free_port("127.0.0.1")
        self.port = free_port(host)
        self.address = f"{host}:{self.port}"
        self.procs = [
            subprocess.Popen([binary, "-port", str(self.local_port)], stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True),
            subprocess.Popen([sys.executable, "-c", _FORWARDER, host, str(self.port), str(self.local_port)],
                             stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True),
        ]
        try:
            wait_port("127.0.0.1", self.local_port, timeout=120)
            wait_port(host, self.port, timeout=60)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
        self._out.close()
