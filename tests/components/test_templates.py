"""The VM backends' templates checked by the real tools: cloud-init, bash, systemd, Caddy.

Every backend's replica and gateway cloud-init is rendered for every seed example and for a
hostile service (quotes, newlines, `$`, backticks in env values, commands, paths and registry
credentials), then:

- `cloud-init schema` validates the document, and PyYAML parses it back to the exact files;
- `bash -n` parses every shell script; `systemd-analyze verify` reads every unit;
- the hostile replica's run script is *executed* against stub `docker`/`aws` commands, and the
  stubs' recorded argv/environment must equal the plan's values byte for byte;
- the gateway's Caddyfile (rendered by `serveform.gateway.render_caddyfile`) passes `caddy validate`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cloud_examples import HF_TOKEN, REGISTRY_PASSWORD, example_plans, hostile_plan  # noqa: E402
from _system_tools import apt_install  # noqa: E402

from serveform.components import _cloud  # noqa: E402
from serveform.components._render import render, sh_quote, systemd_quote, yaml_quote  # noqa: E402
from serveform.components._vm import (  # noqa: E402
    FETCH_BIN,
    DiscoveryTarget,
    ArtifactRef,
    GatewayBoot,
    ReplicaBoot,
    SecretRef,
    VolumeMount,
    gateway_user_data,
    replica_user_data,
    secret_payload,
)
from serveform.stacks.settings import StackSettings  # noqa: E402

CLOUDS = ("aws", "gcp", "azure")
TOKEN = "tok-abc.DEF_123~xyz-0123456789abcdef0123456789"
_SECRET_REFS = {
    "aws": SecretRef(cloud="aws", ref="arn:aws:secretsmanager:us-east-1:123456789012:secret:svc-AbCdEf", region="us-east-1"),
    "gcp": SecretRef(cloud="gcp", ref="projects/acme/secrets/serveform-dev-svc"),
    "azure": SecretRef(cloud="azure", ref="https://sfdev.vault.azure.net/secrets/svc"),
}
_SCALER_ENV_REFS = {
    "aws": SecretRef(cloud="aws", ref="arn:aws:secretsmanager:us-east-1:123456789012:secret:scaler-env-AbCdEf", region="us-east-1"),
    "gcp": SecretRef(cloud="gcp", ref="projects/acme/secrets/serveform-dev-scaler-env"),
    "azure": SecretRef(cloud="azure", ref="https://sfdev.vault.azure.net/secrets/scaler-env"),
}
_VOLUME_REFS = {
    "aws": ("vol-0123456789abcdef0", "/dev/sdf"),
    "gcp": ("https://www.googleapis.com/compute/v1/projects/acme/zones/us-central1-a/disks/serveform-dev-data", "my-new-volume"),
    "azure": ("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/serveform-dev-data", "0"),
}


@pytest.fixture(scope="module")
def cloud_init() -> str:
    return apt_install("cloud-init", "cloud-init")


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    return apt_install("systemd-analyze", "systemd")


def _replica_boot(plan, cloud: str) -> ReplicaBoot:
    mounts = tuple(
        VolumeMount(name=v.names[0], ref=_VOLUME_REFS[cloud][0], container_path=v.path, device=_VOLUME_REFS[cloud][1])
        for v in plan.volumes
        if v.kind == "network"
    )
    return ReplicaBoot(plan=plan, cloud=cloud, stack="dev", secret=_SECRET_REFS[cloud], volumes=mounts,
                       identity="00000000-0000-0000-0000-0000000000aa" if cloud == "azure" else None)


def _settings(cloud: str, **gateway) -> StackSettings:
    return StackSettings.from_config(
        {"serveform:backend": cloud, "serveform:services": ["s.dstack.yml"], "serveform:domain": "example.com",
         "serveform:tokens": [TOKEN], "serveform:gateway": gateway or {"tls": "internal"}},
        stack="dev", project_dir=".",
    )


def _gateway_boot(cloud: str, plans) -> GatewayBoot:
    settings = _settings(cloud)
    return GatewayBoot(
        cloud=cloud,
        stack="dev",
        domain="example.com",
        gateway_document=_cloud.gateway_document(settings, plans),
        targets=tuple(DiscoveryTarget(service=p.name, port=p.replica_group.container_port, cloud=cloud, group=f"serveform-dev-{p.name}",
                                      region="us-east-1") for p in plans),
        tokens_secret=_SECRET_REFS[cloud],
        identity="00000000-0000-0000-0000-0000000000bb" if cloud == "azure" else None,
        scaler_unit=_cloud.scaler_unit(settings, plans),
        project_files={"Pulumi.yaml": "name: serveform\nruntime: python\n", "stacks/Pulumi.dev.yaml": "config: {}\n"},
        scaler_env_secret=_SCALER_ENV_REFS[cloud],
        # AWS ships what the VM runs (issue 14): fetched from the stack's bucket, checked by digest.
        artifacts=tuple(ArtifactRef(name=n, sha256=d * 64, key=f"artifacts/{n}-{d * 64}") for n, d in (("wheelhouse", "a"), ("caddy", "b")))
        if cloud == "aws" else (),
        artifact_bucket="gateway-artifacts-0123abcd" if cloud == "aws" else None,
        artifact_region="us-east-1" if cloud == "aws" else None,
    )


def _files(document_text: str) -> dict[str, dict]:
    assert document_text.startswith("#cloud-config\n")
    document = yaml.safe_load(document_text)
    return {f["path"]: f for f in document["write_files"]}


def _schema_ok(cloud_init: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    result = subprocess.run([cloud_init, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def _bash_n(script: str, tmp_path: Path) -> None:
    path = tmp_path / "script.sh"
    path.write_text(script)
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _units_ok(systemd_analyze: str, units: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "units"
    folder.mkdir(exist_ok=True)
    paths = []
    for name, text in units.items():
        (folder / name).write_text(text)
        paths.append(str(folder / name))
    result = subprocess.run([systemd_analyze, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=120)
    # The ExecStart binaries live on the VM, not here; anything else is a real complaint.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if line.strip() and "is not executable" not in line]
    assert complaints == []


def test_the_tools_catch_errors(cloud_init, systemd_analyze, tmp_path):
    """Negative controls: each checker rejects a broken document, so its silence means something."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\nwrite_files:\n  - path: 7\n    permissions: [1]\nruncmd: 5\n")
    result = subprocess.run([cloud_init, "schema", "--config-file", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert subprocess.run(["bash", "-n"], input="if then fi\n", text=True, capture_output=True).returncode != 0
    (tmp_path / "bad.service").write_text("[Service]\nExecStart=/bin/true\nBogusKey=1\n")
    out = subprocess.run([systemd_analyze, "verify", "--man=no", str(tmp_path / "bad.service")], capture_output=True, text=True)
    assert "Unknown key" in out.stdout + out.stderr


@pytest.mark.parametrize("cloud", CLOUDS)
def test_replica_cloud_init_for_every_example(cloud, cloud_init, systemd_analyze, tmp_path):
    plans = [*example_plans(cloud).values(), hostile_plan(cloud)]
    for plan in plans:
        text = replica_user_data(_replica_boot(plan, cloud))
        _schema_ok(cloud_init, text, tmp_path)
        files = _files(text)
        run_sh = files["/opt/serveform/replica/run.sh"]
        assert run_sh["permissions"] == "0700"
        _bash_n(run_sh["content"], tmp_path)
        _units_ok(systemd_analyze, {"serveform-replica.service": files["/etc/systemd/system/serveform-replica.service"]["content"]}, tmp_path)
        for secret in (HF_TOKEN, REGISTRY_PASSWORD, "s3cr3t"):
            assert secret not in text


@pytest.mark.parametrize("cloud", CLOUDS)
def test_gateway_cloud_init(cloud, cloud_init, systemd_analyze, tmp_path):
    plans = [*example_plans(cloud).values(), hostile_plan(cloud)]
    text = gateway_user_data(_gateway_boot(cloud, plans))
    _schema_ok(cloud_init, text, tmp_path)
    files = _files(text)
    _bash_n(files["/opt/serveform/install.sh"]["content"], tmp_path)
    units = {Path(p).name: f["content"] for p, f in files.items() if p.startswith("/etc/systemd/system/")}
    assert set(units) == {"serveform-gateway.service", "serveform-discovery.service", "serveform-discovery.timer",
                          "serveform-scaler.service"}
    # The scaler runs as its own user: it reads Caddy's metrics on the fixed loopback port, not the
    # gateway's (private) status.json.
    assert "--gateway-state-dir" not in units["serveform-scaler.service"]
    assert '"--metrics-url" "http://127.0.0.1:9180/metrics"' in units["serveform-scaler.service"]
    assert "User=serveform-scaler" in units["serveform-scaler.service"] and "User=serveform\n" in units["serveform-gateway.service"]
    _units_ok(systemd_analyze, units, tmp_path)
    document = json.loads(files["/etc/serveform/gateway.json"]["content"])
    assert document["settings"]["http_port"] == 80 and document["settings"]["https_port"] == 443
    assert document["runtime"] == {"metrics_port": 9180}
    assert {p["name"] for p in document["plans"]} == {p.name for p in plans}
    discovery = json.loads(files["/etc/serveform/discovery.json"]["content"])
    assert [t["service"] for t in discovery["targets"]] == [p.name for p in plans]
    for secret in (TOKEN, HF_TOKEN, REGISTRY_PASSWORD, "s3cr3t"):
        assert secret not in text
    # The gateway unit runs the gateway package's supervisor (Caddy + router + prober).
    assert 'ExecStart=/opt/serveform/venv/bin/python -m serveform.gateway run --state-dir "/var/lib/serveform/gateway"' in units["serveform-gateway.service"]
    install = files["/opt/serveform/install.sh"]["content"]
    if cloud == "aws":
        # The AWS scaler sets its groups' desired capacity with the instance role: no project
        # copy, no Pulumi, no state credentials, even when the boot is handed them.
        unit = units["serveform-scaler.service"]
        assert '"--aws-groups" "/etc/serveform/discovery.json" "--gateway-config" "/etc/serveform/gateway.json"' in unit
        assert "EnvironmentFile" not in unit and "PULUMI" not in unit and "WorkingDirectory=/var/lib/serveform-scaler" in unit
        assert not [p for p in files if p.startswith("/opt/serveform/project")]
        assert "scaler.env" not in install and _SCALER_ENV_REFS[cloud].ref not in install
        assert "pulumi.artifact" not in install and "/usr/local/bin/pulumi" not in install and "pulumi install" not in install
        assert "install -d -o serveform-scaler -g serveform-scaler -m 0700 /var/lib/serveform-scaler" in install
        # AWS fetches with serveform-fetch (stdlib Python, and its AWS module beside it), never awscli.
        assert {"/opt/serveform/bin/serveform-fetch", "/opt/serveform/bin/serveform_aws.py"} <= set(files)
        assert "awscli" not in install and install.index("serveform-fetch secret") > install.index("serveform_fetch_secret()")
        return
    assert files["/opt/serveform/project/stacks/Pulumi.dev.yaml"]["content"] == "config: {}\n"
    # The scaler's unit reads /etc/serveform/scaler.env, which install.sh fetches from the secret store.
    assert "EnvironmentFile=-/etc/serveform/scaler.env" in units["serveform-scaler.service"]
    assert "WorkingDirectory=/opt/serveform/project" in units["serveform-scaler.service"]
    assert _SCALER_ENV_REFS[cloud].ref in install
    assert "retry serveform_fetch_secret > /etc/serveform/scaler.env.json" in install
    assert "chmod 0600 /etc/serveform/scaler.env" in install
    fetch = install.index("> /etc/serveform/scaler.env.json")
    assert install.rindex("umask 077", 0, fetch) > install.rindex("umask 022", 0, fetch), "the env file must be written under umask 077"
    assert install.index("/etc/serveform/scaler.env") < install.index("systemctl enable --now serveform-scaler.service")
    # Without a stored environment, nothing is fetched: the operator provides the file.
    bare = gateway_user_data(dataclasses.replace(_gateway_boot(cloud, plans), scaler_env_secret=None))
    assert "scaler.env.json" not in bare and "the operator provides the scaler's environment file" in bare


def _env_file_converter(install: str) -> str:
    start = install.index("/opt/serveform/venv/bin/python -c '") + len("/opt/serveform/venv/bin/python -c '")
    return install[start:install.index("\n' ", start)]


def test_scaler_env_file_is_written_verbatim_and_refuses_what_it_cannot_quote(tmp_path):
    """The boot script's JSON -> EnvironmentFile step, run for real on hostile but quotable values."""
    install = _files(gateway_user_data(_gateway_boot("gcp", [hostile_plan("gcp")])))["/opt/serveform/install.sh"]["content"]
    code = _env_file_converter(install)
    source, target = tmp_path / "env.json", tmp_path / "scaler.env"
    values = {"PULUMI_BACKEND_URL": "s3://bucket/state?region=us-east-1&x=$HOME", "PULUMI_CONFIG_PASSPHRASE": 'pa"ss $x `y` \\ %n'}
    source.write_text(json.dumps(values))
    subprocess.run([sys.executable, "-c", code, str(source), str(target)], check=True, timeout=60)
    lines = target.read_text().splitlines()
    assert lines == [f"{name}='{value}'" for name, value in sorted(values.items())]
    for bad in ({"PULUMI_CONFIG_PASSPHRASE": "it's"}, {"PULUMI_CONFIG_PASSPHRASE": "a\nb"}, {"BAD NAME": "x"}):
        source.write_text(json.dumps(bad))
        result = subprocess.run([sys.executable, "-c", code, str(source), str(tmp_path / "other.env")], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "expected a variable name and a value without quote or newline" in result.stderr
        assert "it's" not in result.stderr  # the value is a secret: never echoed
        assert not (tmp_path / "other.env").exists()


@pytest.mark.parametrize("tls", [{"tls": "internal"}, {"tls": "acme_dns", "dns_provider": "route53", "acme_email": "ops@example.com"},
                                 {"tls": "off", "allow_plain_http": True}])
def test_gateway_caddyfile_passes_caddy_validate(tls, tmp_path):
    plans = [*example_plans("aws").values(), hostile_plan("aws")]
    caddyfile = _cloud.gateway_caddyfile(_settings("aws", **tls), plans)
    assert TOKEN not in caddyfile
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "SERVEFORM_TOKEN_0": TOKEN}
    result = subprocess.run(["caddy", "validate", "--adapter", "caddyfile", "--config", str(path)], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Valid configuration" in result.stdout + result.stderr


_STUB_DOCKER = """#!/usr/bin/env python3
import json, os, sys
log = os.environ["STUB_LOG"]
entry = {"argv": sys.argv[1:]}
if sys.argv[1:2] == ["login"]:
    entry["stdin"] = sys.stdin.read()
if sys.argv[1:2] == ["run"]:
    names = [a.split("=", 1)[0] for a in sys.argv if "=" not in a and a.isidentifier()]
    entry["env"] = {k: os.environ[k] for k in os.environ if k in ("SECRET_TOKEN",)}
with open(log, "a") as f:
    f.write(json.dumps(entry) + "\\n")
"""


def _stub(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_hostile_values_reach_docker_verbatim(tmp_path):
    """Execute the hostile replica's run.sh against stubs: every value arrives exactly as planned."""
    instance_dir = str(tmp_path / "it's $HOME `x`")
    plan = hostile_plan("aws", instance_dir=instance_dir)
    files = _files(replica_user_data(_replica_boot(plan, "aws")))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = tmp_path / "run.sh"
    # The secret comes from serveform-fetch at its VM path: a stub here, by the same name.
    script.write_text(files["/opt/serveform/replica/run.sh"]["content"].replace(FETCH_BIN, str(bin_dir / "serveform-fetch")))
    script.chmod(0o700)
    _stub(bin_dir, "docker", _STUB_DOCKER)
    payload = secret_payload(plan)
    _stub(bin_dir, "serveform-fetch", f"#!/bin/sh\n[ \"$1\" = secret ] && printf '%s' {sh_quote(payload)}\n")
    # run.sh's metadata rule goes to a stub, never into this machine's firewall: `-C` finds none.
    _stub(bin_dir, "iptables", '#!/bin/sh\necho "$*" >> "$STUB_LOG.iptables"\n[ "$3" != -C ]\n')
    log = tmp_path / "docker.log"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log), "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert Path(f"{log}.iptables").read_text().splitlines() == [
        "-t mangle -C PREROUTING -d 169.254.169.254/32 -j DROP", "-t mangle -I PREROUTING -d 169.254.169.254/32 -j DROP",
    ]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    login = next(c for c in calls if c["argv"][0] == "login")
    assert login["argv"] == ["login", "--username", "o'brien\"$(id)", "--password-stdin", "ghcr.io"]
    assert login["stdin"] == "p'w\n$(reboot)`x`"
    run = next(c for c in calls if c["argv"][0] == "run")
    argv = run["argv"]
    group = plan.replica_group
    assert f"PLAIN={group.env['PLAIN'].value}" in argv
    assert "SECRET_TOKEN" in argv  # passed by name ...
    assert run["env"]["SECRET_TOKEN"] == group.env["SECRET_TOKEN"].value.get_secret_value()  # ... value via the environment
    assert not any("s3cr3t" in a for a in argv)
    assert argv[argv.index("--workdir") + 1] == "/workflow/sub dir/'x'"
    assert f"{instance_dir}:/data/$HOME" in argv and Path(instance_dir).is_dir()
    assert argv[argv.index("--entrypoint") + 1] == "/bin/bash"
    image_at = argv.index("ghcr.io/acme/app:1")
    assert argv[image_at + 1:] == ["-c", " && ".join((*group.setup, *group.commands))]


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_yaml_quote_round_trips_any_text(text):
    assert yaml.safe_load("v: " + yaml_quote(text))["v"] == text


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))
@settings(max_examples=150, deadline=None)
def test_sh_quote_is_one_word_with_the_exact_value(text):
    out = subprocess.run(["bash", "-c", "printf '%s' " + sh_quote(text)], capture_output=True, timeout=10)
    assert out.stdout.decode("utf-8", "surrogateescape") == text


def test_systemd_quote_escapes_specifiers_and_refuses_line_breaks():
    assert systemd_quote('a "b" $X %h') == '"a \\"b\\" $$X %%h"'
    with pytest.raises(ValueError):
        systemd_quote("a\nExecStartPre=/bin/rm -rf /")


def test_templates_refuse_missing_values():
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        render("gateway/serveform-discovery.timer.j2")
