"""What the VM backends (AWS, GCP, Azure) share: capacity choice and boot files.

Everything here is pure — no Pulumi — so the rendered cloud-init and shell can be tested with
real tools (`cloud-init schema`, `bash -n`) without a cloud. The components resolve cloud IDs
(secret ARNs, volume IDs) as Pulumi outputs and then call these functions inside ``apply``.

Secrets never enter a rendered file: the replica's boot script fetches them from the cloud's
secret store (Secrets Manager, Secret Manager, Key Vault) with the instance's own identity, and
the files name only the secret's ID. ``secret_payload`` builds the JSON document the components
store there, and is only ever called inside ``Output.secret``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from serveform.translator.plan import OfferPlan, ServicePlan

from ._render import render

__all__ = [
    "ArtifactRef",
    "CODE_ROOT",
    "Capacity",
    "CodeSource",
    "DEFAULT_VOLUME_SIZE_GB",
    "Cloud",
    "DiscoveryTarget",
    "GatewayBoot",
    "ReplicaBoot",
    "SecretRef",
    "VolumeMount",
    "VmConfigError",
    "capacity",
    "fetch_files",
    "gateway_user_data",
    "image_registry",
    "replica_user_data",
    "secret_env_names",
    "scaler_env_document",
    "scaler_environment",
    "scaler_runs_up",
    "secret_payload",
    "short_name",
]

Cloud = Literal["aws", "gcp", "azure"]

# The gateway host's system users: Caddy, the router and discovery run as the first, the scaler
# (which holds the state's credentials) as the second.
GATEWAY_USER = "serveform"
SCALER_USER = "serveform-scaler"
# Caddy's Prometheus endpoint on the gateway host, loopback only: fixed, so that the scaler (another
# user, who cannot read the gateway's status.json) is told where it is.
GATEWAY_METRICS_PORT = 9180
# What the gateway VM booted from (name, sha256, key of each artifact), written by its user data;
# the scaler's `up` on the VM reuses these instead of building artifacts (it has no checkout).
VM_ARTIFACTS_FILE = "/etc/serveform/artifacts.json"
VM_ARTIFACTS_ENV = "SERVEFORM_VM_ARTIFACTS"
GATEWAY_STATE_DIR = "/var/lib/serveform/gateway"
GATEWAY_CONFIG_DIR = "/etc/serveform"
# How often the gateway host lists each group's instances (systemd timer), in seconds.
DISCOVERY_INTERVAL_SECONDS = 15
# Size of a network volume the stack creates (the service file names a volume, not its size), in GB.
DEFAULT_VOLUME_SIZE_GB = 100
# Where network volumes are mounted on the replica host before they are bound into the container.
VOLUME_MOUNT_ROOT = "/mnt/serveform"
# Where a replica host unpacks the service's code archive, one folder per digest.
CODE_ROOT = "/opt/serveform/code"
# Where the boot's fetcher (components/boot/<cloud>_fetch.py) is written on the VM, and what every
# cloud's fetcher shares (components/boot/_fetch.py) beside it: the script's folder is on its path.
FETCH_BIN = "/opt/serveform/bin/serveform-fetch"
FETCH_LIB = "/opt/serveform/bin/_fetch.py"
# AWS's fetcher signs its calls with serveform.aws.client (standard library only), written beside it.
FETCH_AWS_LIB = "/opt/serveform/bin/serveform_aws.py"
# Where a boot failure is also written, so it shows on the serial console (cloud logs of the VM).
CONSOLE = "/dev/console"
# The instance metadata service of AWS, GCP and Azure (the VM's role credentials or tokens):
# replica containers are cut off from it (replica/run.sh.j2).
METADATA_ADDRESS = "169.254.169.254"
# Caddy with the cloud's DNS module, for the wildcard certificate's DNS challenge.
_CADDY_DNS_MODULE = {
    "route53": "github.com/caddy-dns/route53",
    "cloudflare": "github.com/caddy-dns/cloudflare",
    "googleclouddns": "github.com/caddy-dns/googleclouddns",
    "azure": "github.com/caddy-dns/azure",
}
CADDY_VERSION = "v2.11.9"
# The scaler on the gateway host runs `pulumi up` with this CLI (the SDK's version) in this project copy.
PULUMI_VERSION = "3.259.0"
SCALER_PROJECT_DIR = "/opt/serveform/project"
SCALER_STATE_DIR = "/var/lib/serveform-scaler"
# The scaler unit's EnvironmentFile (serveform.scaler.render_unit's default), root-only.
SCALER_ENV_FILE = "/etc/serveform/scaler.env"
# What the scaler's `pulumi up` needs of the deploying environment: where the state is, its
# passphrase, and a Pulumi Cloud token when the state lives there.
SCALER_ENV_NAMES = ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_ACCESS_TOKEN")

# What an artifact's name and digest may be: they reach install.sh's command lines and object keys.
_ARTIFACT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The boot's fetchers (stdlib Python), written to the VMs as FETCH_BIN and FETCH_LIB.
_BOOT = Path(__file__).resolve().parent / "boot"

# Where GCP and Azure keep a code archive (`_cloud.code_store`): a media URL of the stack's bucket, a blob.
_GCS_MEDIA = re.compile(r"^https://storage\.googleapis\.com/storage/v1/b/([a-z0-9][a-z0-9._-]{1,220})/o/([A-Za-z0-9%._-]+)\?alt=media$")
_AZURE_BLOB = re.compile(r"^https://[a-z0-9]{3,24}\.blob\.core\.windows\.net/[a-z0-9-]{3,63}/[A-Za-z0-9/._-]+$")

# AWS Graviton (arm64) instance families: a letter prefix, a generation, then a `g` among the suffixes.
_AWS_ARM = re.compile(r"^(a1|[a-z]+\d+[a-z]*g[a-z]*)\.")
# Env names reach `export NAME=...` and `docker run -e NAME`: identifiers only.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class VmConfigError(ValueError):
    """A plan or stack setting cannot be turned into VM resources; names the service file and field."""


@dataclass(frozen=True, kw_only=True)
class Capacity:
    """Which instance types a group may use and how spot and on-demand mix."""

    instance_types: tuple[str, ...]
    """Distinct instance types from the plan's offers, cheapest first."""
    spot: bool
    """Whether instances above the on-demand base are spot (preemptible) capacity."""
    on_demand_base: int
    """Instances kept on-demand whatever the market (AWS `on_demand_base_capacity`)."""
    on_demand_percentage: int
    """Share of on-demand capacity above the base, 0–100 (AWS mixed instances policy)."""
    max_price: float | None
    """The service's `max_price` per hour, the spot bid cap; None = on-demand price."""
    region: str | None
    """The region of the cheapest offer, when the offers name one."""
    gpu_name: str | None
    """The GPU of the cheapest offer (GCP maps it to an accelerator type)."""
    gpu_count: int
    """GPUs per instance of the cheapest offer."""


def capacity(plan: ServicePlan, cloud: Cloud, *, region: str | None = None, zone: str | None = None) -> Capacity:
    """Map the plan's offers and `spot_policy` to a group's capacity.

    `spot`: spot only. `on-demand`: on-demand only. `auto` (dstack: spot when available): the
    service's minimum replicas stay on-demand so the floor survives a spot reclaim, the rest
    is spot — the nearest an auto scaling group comes to "spot, else on-demand".
    """
    offers = [o for o in plan.offers if o.backend == cloud and (region is None or not o.region or o.region == region)]
    # The GPU machine images are x86-64: Graviton types (m6g, g5g, t4g, a1, ...) cannot boot them.
    if cloud == "aws":
        offers = [o for o in offers if not _AWS_ARM.match(o.instance_type)]
    # Zonal offers (GCP) count only in the group's zone.
    offers = [o for o in offers if zone is None or getattr(o, "zone", None) in (None, zone)]
    if plan.spot_policy == "spot":
        offers = [o for o in offers if o.spot]
    elif plan.spot_policy == "on-demand":
        offers = [o for o in offers if not o.spot]
    if not offers:
        raise VmConfigError(
            f"{plan.file}: error: offers: no {cloud} offer matches the service's resources "
            f"with spot_policy {plan.spot_policy!r}" + (f" in region {region}" if region else "") + (f", zone {zone}" if zone else "") + "; widen `resources` or `regions`"
        )
    offers.sort(key=lambda o: (o.price_per_hour, o.instance_type))
    types: list[str] = []
    for offer in offers:
        if offer.instance_type not in types:
            types.append(offer.instance_type)
    cheapest: OfferPlan = offers[0]
    if plan.spot_policy == "spot":
        spot, base, percentage = True, 0, 0
    elif plan.spot_policy == "on-demand":
        spot, base, percentage = False, 0, 100
    else:
        spot, base, percentage = any(o.spot for o in offers), plan.replicas.min, 0
        if not spot:
            base, percentage = 0, 100
    return Capacity(
        instance_types=tuple(types),
        spot=spot,
        on_demand_base=base,
        on_demand_percentage=percentage,
        max_price=plan.max_price,
        region=cheapest.region or None,
        gpu_name=cheapest.gpu_name,
        gpu_count=cheapest.gpu_count,
    )


@dataclass(frozen=True, kw_only=True)
class SecretRef:
    """Where a boot script finds a secret document; the ID only, never the value."""

    cloud: Cloud
    """Which cloud."""
    ref: str
    """AWS: the secret's ARN; GCP: `projects/<p>/secrets/<id>`; Azure: the secret's URL in Key Vault."""
    region: str | None = None
    """AWS: the secret's region."""


@dataclass(frozen=True, kw_only=True)
class VolumeMount:
    """A network disk the replica attaches at boot and binds into the container."""

    name: str
    """The volume's name in the service file (also its mount folder on the host)."""
    ref: str
    """AWS: volume ID; GCP: disk self link; Azure: managed disk ID."""
    container_path: str
    """Where the service sees it."""
    device: str
    """AWS: device name (`/dev/sdf`); GCP: device name; Azure: LUN."""


def short_name(prefix: str, *parts: str, limit: int) -> str:
    """A DNS-safe name `<prefix>-<parts>` cut to ``limit`` characters, with a hash when cut.

    Cloud names have small limits (GCP service accounts 30, Key Vault 24); the hash keeps two
    long service names from colliding after the cut.
    """
    import hashlib

    full = "-".join((prefix, *parts)).lower()
    full = re.sub(r"[^a-z0-9-]+", "-", full).strip("-")
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:6]
    return f"{full[: limit - 7].rstrip('-')}-{digest}"


def image_registry(image: str) -> str | None:
    """The registry host of an image reference, None for Docker Hub (Docker's own rule)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def _check_env_names(plan: ServicePlan) -> None:
    for name in plan.replica_group.env:
        if not _ENV_NAME.match(name):
            raise VmConfigError(f"{plan.file}: error: env.{name}: not a valid environment variable name")


def secret_env_names(plan: ServicePlan) -> tuple[str, ...]:
    """Env names whose values are secrets (fetched at boot, never rendered)."""
    return tuple(sorted(n for n, v in plan.replica_group.env.items() if v.secret or _is_secret(v.value)))


def _is_secret(value: object) -> bool:
    return hasattr(value, "get_secret_value")


def _plain_env(plan: ServicePlan) -> dict[str, str]:
    secret = set(secret_env_names(plan))
    env: dict[str, str] = {}
    for name, value in plan.replica_group.env.items():
        if name in secret:
            continue
        if value.value is None:
            raise VmConfigError(f"{plan.file}: error: env.{name}: has no value; set it in the environment or in serveform:secrets")
        env[name] = str(value.value)
    return env


def needs_secret_store(plan: ServicePlan) -> bool:
    """Whether the plan carries anything that must be fetched from the secret store."""
    return bool(secret_env_names(plan)) or plan.replica_group.registry_auth is not None


def secret_payload(plan: ServicePlan) -> str:
    """The JSON document stored in the secret store for a service. Call only inside `Output.secret`."""
    env: dict[str, str] = {}
    for name in secret_env_names(plan):
        value = plan.replica_group.env[name].value
        if value is None:
            raise VmConfigError(f"{plan.file}: error: env.{name}: has no value; set it in the environment or in serveform:secrets")
        env[name] = value.get_secret_value() if _is_secret(value) else str(value)
    auth = plan.replica_group.registry_auth
    return json.dumps(
        {"env": env, "registry_password": auth.password.get_secret_value() if auth else None}, sort_keys=True
    )


@dataclass(frozen=True, kw_only=True)
class CodeSource:
    """Where a replica VM fetches the service's code archive (`ServicePlan.code`) with its own identity."""

    url: str
    """AWS: `s3://<bucket>/<key>`; GCP: the object's JSON API media URL
    (`https://storage.googleapis.com/storage/v1/b/<bucket>/o/<object>?alt=media`); Azure: the blob's URL."""
    region: str | None = None
    """AWS: the bucket's region."""


@dataclass(frozen=True, kw_only=True)
class ReplicaBoot:
    """Everything a replica's cloud-init needs, resolved to plain values."""

    plan: ServicePlan
    """The compiled service."""
    cloud: Cloud
    """Which cloud."""
    stack: str
    """The stack name, for tags and names."""
    secret: SecretRef | None = None
    """Where the boot script fetches the service's secrets, if it has any."""
    volumes: tuple[VolumeMount, ...] = ()
    """Network volumes to attach and mount."""
    identity: str | None = None
    """Azure: client ID of the scale set's user-assigned identity (reads Key Vault, attaches disks)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """More environment variables for the container (plain values only)."""
    code: CodeSource | None = None
    """Where the plan's code archive lies in the stack's artifact store. With it (and `plan.code`),
    the boot fetches the archive, checks its SHA-256, unpacks it and mounts it at `/workflow`;
    the digest is in the user data, so a code change rolls the group."""


def _docker_script(plan: ServicePlan) -> list[str]:
    """The shell words of the container's command: entrypoint (default `/bin/sh -c`) + script."""
    group = plan.replica_group
    script = " && ".join((*group.setup, *group.commands))
    return [script] if script else []


def _container_workdir(plan: ServicePlan) -> str | None:
    wd = plan.replica_group.working_dir
    if not wd:
        return None
    # dstack: working_dir is relative to the repository folder /workflow.
    if wd in (".", "./"):
        return "/workflow"
    return wd if wd.startswith("/") else "/workflow/" + wd.removeprefix("./")


def replica_user_data(boot: ReplicaBoot) -> str:
    """The `#cloud-config` document of a replica VM."""
    plan = boot.plan
    _check_env_names(plan)
    group = plan.replica_group
    res = group.resources
    env = {
        "DSTACK_RUN_NAME": plan.name,
        "DSTACK_GPUS_NUM": str(group.gpus_num),
        "HOME": group.home_dir,
        **boot.extra_env,
        **_plain_env(plan),
    }
    # Both or neither: the plan's archive, and where the stack's artifact store keeps it.
    code = boot.code if plan.code is not None else None
    s3 = _s3_location(plan, code) if code is not None and boot.cloud == "aws" else None
    gcs = _gcs_location(plan, code) if code is not None and boot.cloud == "gcp" else None
    if code is not None and boot.cloud == "azure" and (not _AZURE_BLOB.match(code.url) or not boot.identity):
        raise VmConfigError(f"{plan.file}: error: code archive: expected a blob URL of the stack's storage account and the replicas' identity, got {code.url!r}")
    entrypoint = group.entrypoint.split() if group.entrypoint else (["/bin/sh", "-c"] if _docker_script(plan) else [])
    instance_volumes = [v for v in plan.volumes if v.kind == "instance"]
    run_sh = render(
        "replica/run.sh.j2",
        plan=plan,
        cloud=boot.cloud,
        stack=boot.stack,
        secret=boot.secret,
        secret_names=secret_env_names(plan),
        env=env,
        image=group.image,
        registry=image_registry(group.image),
        registry_auth=group.registry_auth,
        entrypoint=entrypoint,
        args=_docker_script(plan),
        workdir=plan.code.workdir if code is not None and plan.code is not None else _container_workdir(plan),
        code=code,
        code_plan=plan.code,
        code_root=CODE_ROOT,
        console=CONSOLE,
        s3=s3,
        gcs=gcs,
        fetch_bin=FETCH_BIN,
        gpu_vendor=(res.gpu_vendor or ("nvidia" if group.gpus_num else None)),
        gpus_num=group.gpus_num,
        shm_mb=int(res.shm_size_gb * 1024) if res.shm_size_gb else None,
        privileged=group.privileged,
        port=group.container_port,
        metadata_address=METADATA_ADDRESS,
        volumes=boot.volumes,
        identity=boot.identity or "",
        instance_volumes=instance_volumes,
        mount_root=VOLUME_MOUNT_ROOT,
    )
    unit = render("replica/serveform-replica.service.j2", service=plan.name)
    return render(
        "replica/cloud-init.yaml.j2",
        plan=plan,
        cloud=boot.cloud,
        run_sh=run_sh,
        unit=unit,
        # Replicas fetch the code with the gateway's fetcher of their cloud (Python's standard
        # library only, the instance's identity): no awscli, gcloud or az on the image needed. On
        # AWS it fetches the service's secret too (Debian 12's awscli predates AWS_ENDPOINT_URL).
        fetch_files=fetch_files(boot.cloud) if code is not None or (boot.cloud == "aws" and boot.secret is not None) else {},
    )


def fetch_files(cloud: Cloud) -> dict[str, str]:
    """The boot's fetcher of ``cloud`` and the part every cloud's shares: VM path → text (user data's write_files)."""
    files = {FETCH_BIN: (_BOOT / f"{cloud}_fetch.py").read_text(), FETCH_LIB: (_BOOT / "_fetch.py").read_text()}
    if cloud == "aws":
        files[FETCH_AWS_LIB] = (_BOOT.parent.parent / "aws" / "client.py").read_text()
    return files


def _gcs_location(plan: ServicePlan, code: CodeSource) -> dict[str, str]:
    """Bucket and object of a Cloud Storage media URL, for `serveform-fetch artifact` (gcp_fetch.py)."""
    import urllib.parse

    match = _GCS_MEDIA.match(code.url)
    name = urllib.parse.unquote(match.group(2)) if match else ""
    if not match or not re.fullmatch(r"[A-Za-z0-9/._-]+", name):
        raise VmConfigError(
            f"{plan.file}: error: code archive: expected https://storage.googleapis.com/storage/v1/b/BUCKET/o/OBJECT?alt=media, got {code.url!r}"
        )
    return {"bucket": match.group(1), "object": name}


def _s3_location(plan: ServicePlan, code: CodeSource) -> dict[str, str]:
    """Bucket, key and region of an `s3://` code URL, for `serveform-fetch artifact`."""
    bucket, _, key = code.url.removeprefix("s3://").partition("/")
    if not code.url.startswith("s3://") or not bucket or not re.fullmatch(r"[A-Za-z0-9/._-]+", key) or not code.region:
        raise VmConfigError(f"{plan.file}: error: code archive: expected an s3://BUCKET/KEY location and its region, got {code.url!r}")
    return {"bucket": bucket, "key": key, "region": code.region}


@dataclass(frozen=True, kw_only=True)
class DiscoveryTarget:
    """One service's group, as the gateway's discovery step looks it up."""

    service: str
    """The service name."""
    port: int
    """The service port on each replica."""
    cloud: Cloud
    """Which cloud."""
    group: str
    """AWS: auto scaling group name; GCP: managed instance group name; Azure: scale set name."""
    region: str | None = None
    """AWS region / GCP zone of the group."""
    project: str | None = None
    """GCP project; Azure subscription ID."""
    resource_group: str | None = None
    """Azure resource group."""

    def as_json(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class ArtifactRef:
    """A file the gateway VM fetches from the stack's bucket at boot (`serveform.image.vm`)."""

    name: str
    """`wheelhouse`, `caddy` or `pulumi`: the boot's messages name it."""
    sha256: str
    """Hex digest the boot checks before using the file."""
    key: str
    """Its object key in the stack's bucket."""

    def __post_init__(self) -> None:
        if not _ARTIFACT_NAME.match(self.name) or not _SHA256.match(self.sha256) or not re.fullmatch(r"[A-Za-z0-9/._-]+", self.key):
            raise VmConfigError(f"artifact {self.name!r}: expected a lower-case name, a hex sha256 and a plain object key")


@dataclass(frozen=True, kw_only=True)
class GatewayBoot:
    """Everything the gateway VM's cloud-init needs, resolved to plain values."""

    cloud: Cloud
    """Which cloud."""
    stack: str
    """The stack name, for tags and names."""
    domain: str
    """Services answer at `<service>.<domain>`."""
    gateway_document: dict[str, object]
    """`<state_dir>/gateway.json` (settings and plans, no secrets) in the gateway package's layout."""
    targets: tuple[DiscoveryTarget, ...]
    """One discovery target per service."""
    tokens_secret: SecretRef | None
    """Where the bearer tokens live; fetched at boot into a root-only environment file."""
    identity: str | None = None
    """Azure: client ID of the gateway's user-assigned identity."""
    dns_provider: str | None = None
    """The ACME DNS provider (`serveform:gateway.dns_provider`)."""
    package_spec: str = "serveform"
    """What the gateway host installs with pip."""
    scaler_unit: str | None = None
    """The scaler's systemd unit (`serveform.scaler.render_unit`), when a service autoscales."""
    project_files: dict[str, str] = field(default_factory=dict)
    """Project-relative path → text: what the scaler's `pulumi up` on the host needs."""
    dns_options: dict[str, str] = field(default_factory=dict)
    """Options of Caddy's DNS module (IDs only: the instance identity is the credential)."""
    scaler_env_secret: SecretRef | None = None
    """Where the scaler's environment (state backend URL, passphrase) lives; fetched at boot into
    SCALER_ENV_FILE (0600). None: the operator provides that file."""
    artifacts: tuple[ArtifactRef, ...] = ()
    """What the VM runs, shipped by the deployment: fetched from `artifact_bucket` with the
    instance's identity and checked by digest. Empty: the older download path."""
    artifact_bucket: str | None = None
    """The stack's private store holding `artifacts`: AWS and GCP the bucket's name, Azure the
    blob container's URL (`https://<account>.blob.core.windows.net/<container>`)."""
    artifact_region: str | None = None
    """AWS: the bucket's region."""


def scaler_runs_up(cloud: Cloud) -> bool:
    """Whether the gateway VM's scaler applies counts with a scale `pulumi up` (GCP, Azure), so the
    VM needs the Pulumi CLI, a project copy and the state's credentials; on AWS it sets its groups'
    desired capacity with the instance role (`serveform.scaler.autoscaling`) and needs none."""
    return cloud != "aws"


def scaler_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The scaler's environment taken from the deploying one (SCALER_ENV_NAMES that are set).

    Only ever called inside ``Output.secret``: the values are the state's credentials. A
    passphrase given as PULUMI_CONFIG_PASSPHRASE_FILE (the form the README recommends) is read, so
    the host's scaler gets it as PULUMI_CONFIG_PASSPHRASE in its 0600 env file.
    """
    values = {name: environ[name] for name in SCALER_ENV_NAMES if environ.get(name)}
    passphrase_file = environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if "PULUMI_CONFIG_PASSPHRASE" not in values and passphrase_file:
        values["PULUMI_CONFIG_PASSPHRASE"] = Path(passphrase_file).expanduser().read_text().rstrip("\n")
    return values


def scaler_env_document(scaler_unit: str | None, environment: Mapping[str, str] | None) -> str | None:
    """The scaler's environment as the JSON document the secret store keeps, or None (no scaler, nothing set).

    ``environment`` None: the deploying environment's SCALER_ENV_NAMES. Only ever called
    inside ``Output.secret``: the values are the state's credentials.
    """
    if scaler_unit is None:
        return None
    values = dict(environment) if environment is not None else scaler_environment(os.environ)
    return json.dumps(values, sort_keys=True) if values else None


def gateway_user_data(boot: GatewayBoot) -> str:
    """The `#cloud-config` document of the gateway VM."""
    module = _CADDY_DNS_MODULE.get(boot.dns_provider or "")
    caddy_url = "https://caddyserver.com/api/download?os=linux&arch=amd64" + (f"&p={module}" if module else "")
    discovery: dict[str, object] = {
        "stack": boot.stack,
        "interval_seconds": DISCOVERY_INTERVAL_SECONDS,
        "targets": [t.as_json() for t in boot.targets],
    }
    if boot.cloud == "azure" and boot.identity:
        discovery["azure_client_id"] = boot.identity
    from serveform.gateway.state import CONFIG_FILE, DNS_OPTIONS_FILE, TOKENS_FILE

    if boot.artifacts and (not boot.artifact_bucket or (boot.cloud == "aws" and not boot.artifact_region)):
        raise VmConfigError(f"{boot.cloud} gateway: shipped artifacts need the stack's store (and on AWS its region)")
    if boot.artifacts and boot.cloud == "azure" and not re.fullmatch(r"https://[a-z0-9]{3,24}\.blob\.core\.windows\.net/[a-z0-9-]{3,63}", boot.artifact_bucket or ""):
        raise VmConfigError(f"azure gateway: expected the artifacts' container URL, got {boot.artifact_bucket!r}")
    install_sh = render(
        "gateway/install.sh.j2",
        config_file=CONFIG_FILE,
        tokens_file=TOKENS_FILE,
        dns_options_file=DNS_OPTIONS_FILE,
        cloud=boot.cloud,
        package_spec=boot.package_spec,
        caddy_url=caddy_url,
        caddy_version=CADDY_VERSION,
        tokens_secret=boot.tokens_secret,
        identity=boot.identity or "",
        dns_options=boot.dns_options,
        config_dir=GATEWAY_CONFIG_DIR,
        state_dir=GATEWAY_STATE_DIR,
        scaler=boot.scaler_unit is not None,
        scaler_up=boot.scaler_unit is not None and scaler_runs_up(boot.cloud),
        pulumi_version=PULUMI_VERSION,
        project_dir=SCALER_PROJECT_DIR,
        scaler_state_dir=SCALER_STATE_DIR,
        scaler_env_secret=boot.scaler_env_secret if boot.scaler_unit is not None and scaler_runs_up(boot.cloud) else None,
        scaler_env_file=SCALER_ENV_FILE,
        gateway_user=GATEWAY_USER,
        scaler_user=SCALER_USER,
        artifacts=boot.artifacts,
        artifact_bucket=boot.artifact_bucket or "",
        artifact_region=boot.artifact_region or "",
    )
    units = {
        "serveform-gateway.service": render(
            "gateway/serveform-gateway.service.j2", config_dir=GATEWAY_CONFIG_DIR, state_dir=GATEWAY_STATE_DIR
        ),
        "serveform-discovery.service": render(
            "gateway/serveform-discovery.service.j2", config_dir=GATEWAY_CONFIG_DIR, state_dir=GATEWAY_STATE_DIR
        ),
        "serveform-discovery.timer": render("gateway/serveform-discovery.timer.j2", interval_seconds=DISCOVERY_INTERVAL_SECONDS),
    }
    if boot.scaler_unit is not None:
        units["serveform-scaler.service"] = boot.scaler_unit
    return render(
        "gateway/cloud-init.yaml.j2",
        install_sh=install_sh,
        units=units,
        gateway_json=json.dumps(boot.gateway_document, sort_keys=True, indent=2) + "\n",
        discovery_json=json.dumps(discovery, sort_keys=True, indent=2) + "\n",
        config_dir=GATEWAY_CONFIG_DIR,
        state_dir=GATEWAY_STATE_DIR,
        project_dir=SCALER_PROJECT_DIR,
        # The project copy serves a scaler's `up` only (GCP, Azure).
        project_files=boot.project_files if boot.scaler_unit is not None and scaler_runs_up(boot.cloud) else {},
        fetch_files=fetch_files(boot.cloud) if boot.artifacts else {},
        artifacts_json=json.dumps(
            {"bucket": boot.artifact_bucket, "artifacts": [a.__dict__ for a in boot.artifacts]}, sort_keys=True, indent=2
        ) + "\n" if boot.artifacts else "",
        artifacts_file=VM_ARTIFACTS_FILE,
    )
