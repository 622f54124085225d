"""The gateway's state directory: the files its callers write and the files it answers with.

Layout of ``DIR`` (created 0700)::

    gateway.json            written by the caller: {"settings": ..., "plans": [...], "tokens_file": ...}
    secrets/tokens.json     the bearer tokens, a JSON list (0600); path given by "tokens_file"
    secrets/dns.json        optional DNS-provider options, a JSON object (0600); "dns_options_file"
    secrets/probe_headers.json  optional secret probe header values (0600); "probe_headers_file"
    replicas/<svc>.json     written by publish_replicas: {"addresses": [...], "generation": n}
    status.json             written by the gateway: ports, metrics URL, published/ready replicas
    Caddyfile               the rendered config (no secrets: tokens are placeholders)
    secrets/caddy.json      the adapted config with secrets filled in, what Caddy runs (0600)
    caddy/                  Caddy's storage (certificates, the internal CA under pki/)
    caddy.log               Caddy's own log
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from serveform.translator.plan import ServicePlan

from .errors import GatewayConfigError, Problem
from .settings import GatewaySettings

__all__ = [
    "CONFIG_FILE",
    "DNS_OPTIONS_FILE",
    "GatewayConfig",
    "config_files",
    "TOKENS_FILE",
    "parse_address",
    "publish_replicas",
    "read_config",
    "read_published",
    "read_status",
    "write_config",
    "write_private",
]

CONFIG_FILE = "gateway.json"
TOKENS_FILE = "secrets/tokens.json"
DNS_OPTIONS_FILE = "secrets/dns.json"
PROBE_HEADERS_FILE = "secrets/probe_headers.json"
STATUS_FILE = "status.json"
REPLICAS_DIR = "replicas"

PUBLISH_ACK_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class GatewayConfig:
    """What one gateway serves: settings (with secrets filled in) and the stack's plans."""

    settings: GatewaySettings
    plans: tuple[ServicePlan, ...]


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to a 0600 file (its directory 0700 if created)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def config_files(settings: GatewaySettings, plans: Sequence[ServicePlan]) -> tuple[dict[str, str], dict[str, str]]:
    """The files a gateway's state directory needs: ``(plain files, secret files)``, path -> text.

    The plain files hold no secret (secret values serialise as ``**********``); the secret files
    hold the tokens, DNS-provider options and secret probe headers, to be written 0600 (and, in a
    Pulumi program, kept as secrets).
    """
    probe_headers: dict[str, dict[str, dict[str, str]]] = {}
    for plan in plans:
        for index, probe in enumerate(plan.route.probes):
            hidden = {k: v.get_secret_value() for k, v in probe.headers.items() if isinstance(v, SecretStr)}
            if hidden:
                probe_headers.setdefault(plan.name, {})[str(index)] = hidden
    document = {
        "settings": settings.model_dump(mode="json", exclude={"tokens", "dns_options"}),
        # Without `code`: the gateway never needs the archive, whose path is the deploying checkout's
        # (a CI clone elsewhere must not change the gateway's config, and restart it).
        "plans": [json.loads(plan.model_dump_json(exclude={"code"})) for plan in plans],
        "tokens_file": TOKENS_FILE,
        "dns_options_file": DNS_OPTIONS_FILE,
        "probe_headers_file": PROBE_HEADERS_FILE,
    }
    secrets = {
        TOKENS_FILE: json.dumps([t.get_secret_value() for t in settings.tokens]),
        DNS_OPTIONS_FILE: json.dumps({k: v.get_secret_value() for k, v in settings.dns_options.items()}),
        PROBE_HEADERS_FILE: json.dumps(probe_headers),
    }
    return {CONFIG_FILE: json.dumps(document, indent=2, sort_keys=True) + "\n"}, secrets


def write_config(state_dir: str | os.PathLike[str], settings: GatewaySettings, plans: Sequence[ServicePlan]) -> None:
    """Write ``gateway.json`` and the secrets files a gateway in ``state_dir`` reads (all 0600).

    A running gateway picks the change up by itself (or at once on SIGHUP).
    """
    root = Path(state_dir)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    plain, secret = config_files(settings, plans)
    for name, text in secret.items():
        write_private(root / name, text)
    for name, text in plain.items():
        write_private(root / name, text)


def _secret_file(root: Path, name: str | None, default: Any, problems: list[Problem], field: str) -> Any:
    if not name:
        return default
    path = root / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (OSError, json.JSONDecodeError) as exc:
        # Never echo the file's contents: it holds secrets.
        problems.append(Problem(str(path), field, f"cannot read: {type(exc).__name__}"))
        return default


def read_config(state_dir: str | os.PathLike[str]) -> GatewayConfig:
    """Read and check ``gateway.json`` and its secrets; raises GatewayConfigError with every problem."""
    root = Path(state_dir)
    path = root / CONFIG_FILE
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GatewayConfigError([Problem(str(path), "<file>", str(exc))]) from None
    if not isinstance(document, dict):
        raise GatewayConfigError([Problem(str(path), "<file>", "expected a JSON object")])
    problems: list[Problem] = []
    tokens = _secret_file(root, document.get("tokens_file"), [], problems, "tokens_file")
    dns_options = _secret_file(root, document.get("dns_options_file"), {}, problems, "dns_options_file")
    if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        problems.append(Problem(str(root / str(document.get("tokens_file"))), "tokens", "expected a JSON list of strings"))
        tokens = []
    if not (isinstance(dns_options, dict) and all(isinstance(v, str) for v in dns_options.values())):
        problems.append(Problem(str(root / str(document.get("dns_options_file"))), "dns_options", "expected a JSON object of strings"))
        dns_options = {}
    settings = None
    try:
        raw = dict(document.get("settings") or {})
        raw["tokens"] = [SecretStr(t) for t in tokens]
        raw["dns_options"] = {k: SecretStr(v) for k, v in dns_options.items()}
        settings = GatewaySettings.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors(include_input=False):
            loc = ".".join(str(p) for p in error["loc"])
            problems.append(Problem(str(path), f"settings.{loc}" if loc else "settings", error["msg"]))
    probe_headers = _secret_file(root, document.get("probe_headers_file"), {}, problems, "probe_headers_file")
    if not isinstance(probe_headers, dict):
        problems.append(Problem(str(root / str(document.get("probe_headers_file"))), "probe_headers", "expected a JSON object"))
        probe_headers = {}
    plans: list[ServicePlan] = []
    for index, raw_plan in enumerate(document.get("plans") or []):
        try:
            plan = ServicePlan.model_validate(raw_plan)
            plans.append(_with_probe_headers(plan, probe_headers.get(plan.name) or {}))
        except ValidationError as exc:
            for error in exc.errors(include_input=False):
                loc = ".".join(str(p) for p in error["loc"])
                problems.append(Problem(str(path), f"plans[{index}].{loc}", error["msg"]))
    if problems or settings is None:
        raise GatewayConfigError(problems)
    return GatewayConfig(settings=settings, plans=tuple(plans))


def _with_probe_headers(plan: ServicePlan, hidden: dict[str, Any]) -> ServicePlan:
    """Put secret probe header values (kept out of gateway.json) back into the plan."""
    if not hidden:
        return plan
    probes = []
    for index, probe in enumerate(plan.route.probes):
        values = hidden.get(str(index)) or {}
        headers = {**probe.headers, **{k: SecretStr(str(v)) for k, v in values.items()}}
        probes.append(probe.model_copy(update={"headers": headers}))
    return plan.model_copy(update={"route": plan.route.model_copy(update={"probes": tuple(probes)})})


def parse_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:8000"`` or ``"[::1]:8000"`` -> ``(ip, port)``; ValueError naming the address otherwise."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = str(ipaddress.ip_address(host))
        number = int(port)
    except ValueError:
        raise ValueError(f"replica address {address!r}: expected IP:PORT, e.g. 127.0.0.1:8000") from None
    if not sep or not 0 < number < 65536:
        raise ValueError(f"replica address {address!r}: expected IP:PORT, e.g. 127.0.0.1:8000")
    return ip, number


def read_status(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The running gateway's ``status.json`` (ports, metrics URL, replicas), or None."""
    try:
        return json.loads((Path(state_dir) / STATUS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_published(state_dir: str | os.PathLike[str]) -> dict[str, tuple[int, tuple[tuple[str, int], ...]]]:
    """Every service's published replicas: service -> (generation, ((ip, port), ...))."""
    out: dict[str, tuple[int, tuple[tuple[str, int], ...]]] = {}
    folder = Path(state_dir) / REPLICAS_DIR
    if not folder.is_dir():
        return out
    for path in folder.glob("*.json"):
        try:
            document = json.loads(path.read_text())
            addresses = tuple(parse_address(a) for a in document["addresses"])
            out[path.stem] = (int(document.get("generation", 0)), addresses)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a half-written or foreign file: the next poll sees the complete one
    return out


def _gateway_alive(status: dict[str, Any] | None) -> bool:
    if not status or not isinstance(status.get("pid"), int):
        return False
    try:
        os.kill(status["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish_replicas(
    state_dir: str | os.PathLike[str],
    service: str,
    addresses: Sequence[str],
    *,
    wait: bool = True,
    timeout_seconds: float = PUBLISH_ACK_TIMEOUT_SECONDS,
) -> None:
    """Tell the gateway in ``state_dir`` the replica addresses (``IP:PORT``) of ``service``.

    No Caddy reload happens: the gateway probes the new addresses and hands the ready ones to
    Caddy. With ``wait`` (the default) and a running gateway, this returns once the gateway has
    taken the list in and, when addresses were removed, once status.json (which reports the ready
    sets Caddy serves) no longer lists them — so stopping a removed replica afterwards loses no new
    request. Without a running gateway it only writes the file, which the gateway reads when it
    starts.
    """
    parsed = [parse_address(a) for a in addresses]  # refuse bad input before touching anything
    if not service or "/" in service or service.startswith("."):
        raise ValueError(f"service name {service!r} cannot name a file")
    root = Path(state_dir)
    folder = root / REPLICAS_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{service}.json"
    previous: set[tuple[str, int]] = set()
    generation = 0
    try:
        document = json.loads(path.read_text())
        previous = {parse_address(a) for a in document.get("addresses", [])}
        generation = int(document.get("generation", 0))
    except (OSError, ValueError, TypeError):
        pass
    generation = max(generation, time.time_ns() // 1000) + 1
    canonical = [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip, port in parsed]
    write_private(path, json.dumps({"addresses": canonical, "generation": generation}))
    if not wait:
        return
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        status = read_status(root)
        if not _gateway_alive(status):
            return
        view = (status or {}).get("services", {}).get(service) or {}
        served = {parse_address(a) for a in view.get("ready", [])}
        if view.get("generation", 0) >= generation and not (previous - set(parsed)) & served:
            return
        time.sleep(0.05)
    raise TimeoutError(f"the gateway in {root} did not take in the replicas of {service} within {timeout_seconds:g} s")
