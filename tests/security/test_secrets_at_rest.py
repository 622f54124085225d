"""Secrets at rest: which stacks may use the published passphrase, and a private state directory.

The passphrase cases call the engine's environment builder and the real `serveform` CLI; the
state-permission case deploys a real local stack with the real Pulumi CLI into a state
directory that an older release left readable by everyone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from serveform.stacks import engine

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = "serveform-local-only"
CLI_TIMEOUT_SECONDS = 300


def _project(root: Path, stack: str, config: dict, **top: object) -> Path:
    (root / "stacks").mkdir(parents=True, exist_ok=True)
    (root / "Pulumi.yaml").write_text("name: serveform\nruntime: python\nstackConfigDir: stacks\n")
    (root / "stacks" / f"Pulumi.{stack}.yaml").write_text(json.dumps({**top, "config": config}))
    return root


@pytest.fixture
def no_passphrase(monkeypatch):
    for name in ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE", "PULUMI_BACKEND_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("stack", "backend"), [("dev", "k8s"), ("k8s", "k8s"), ("dev", "aws"), ("prod", "gcp"), ("k8s", None)]
)
def test_the_published_passphrase_is_never_chosen_by_stack_name(tmp_path, no_passphrase, stack, backend) -> None:
    config = {"serveform:backend": backend} if backend else {}
    project = _project(tmp_path, stack, config)
    with pytest.raises(engine.PassphraseRequired) as caught:
        engine.workspace_env(project, stack)
    message = str(caught.value)
    assert f"stack {stack!r}" in message and f"stacks/Pulumi.{stack}.yaml" in message
    assert "PULUMI_CONFIG_PASSPHRASE" in message and "PULUMI_CONFIG_PASSPHRASE_FILE" in message


def test_local_backend_on_a_remote_state_needs_a_passphrase(tmp_path, no_passphrase) -> None:
    project = _project(tmp_path, "dev", {"serveform:backend": "local"})
    no_passphrase.setenv("PULUMI_BACKEND_URL", "s3://team-state/serveform")
    with pytest.raises(engine.PassphraseRequired, match="s3://team-state/serveform"):
        engine.workspace_env(project, "dev")


def test_local_backend_with_a_state_on_this_machine_uses_the_published_passphrase(tmp_path, no_passphrase) -> None:
    project = _project(tmp_path, "dev", {"serveform:backend": "local"})
    env = engine.workspace_env(project, "dev")
    assert env["PULUMI_CONFIG_PASSPHRASE"] == PUBLISHED
    assert env["PULUMI_BACKEND_URL"] == (project / ".serveform" / "state").as_uri()


def test_a_passphrase_or_secrets_provider_from_the_environment_is_used(tmp_path, no_passphrase) -> None:
    project = _project(tmp_path, "k8s", {"serveform:backend": "k8s"})
    secret_file = tmp_path / "passphrase"
    secret_file.write_text("x" * 40)
    no_passphrase.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", str(secret_file))
    env = engine.workspace_env(project, "k8s")
    assert env["PULUMI_CONFIG_PASSPHRASE_FILE"] == str(secret_file) and "PULUMI_CONFIG_PASSPHRASE" not in env
    no_passphrase.delenv("PULUMI_CONFIG_PASSPHRASE_FILE")
    kms = _project(tmp_path / "kms", "prod", {"serveform:backend": "aws"}, secretsprovider="awskms://alias/serveform")
    assert "PULUMI_CONFIG_PASSPHRASE" not in engine.workspace_env(kms, "prod")
    no_passphrase.setenv("PULUMI_BACKEND_URL", "https://api.pulumi.com")  # Pulumi Cloud encrypts itself
    assert "PULUMI_CONFIG_PASSPHRASE" not in engine.workspace_env(project, "k8s")


def test_the_cli_stops_with_the_message_before_touching_anything(tmp_path) -> None:
    project = _project(tmp_path, "k8s", {"serveform:backend": "k8s", "serveform:services": ["x.dstack.yml"]})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "SERVEFORM_"))}
    env["SERVEFORM_PROJECT_DIR"] = str(project)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "serveform"), "preview", "--stack", "k8s"],
        cwd=project, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS,
    )
    assert result.returncode != 0
    assert "stack 'k8s'" in result.stderr and "PULUMI_CONFIG_PASSPHRASE" in result.stderr, result.stderr
    assert not (project / ".serveform" / "state" / ".pulumi" / "stacks").exists()


def test_the_committed_k8s_stack_is_not_encrypted_with_the_published_passphrase() -> None:
    import yaml

    k8s = yaml.safe_load((ROOT / "stacks" / "Pulumi.k8s.yaml").read_text())
    dev = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())
    # The salt the published passphrase produced is gone; the first `make k8s-up` writes this checkout's own.
    assert "encryptionsalt" not in k8s
    assert not any(isinstance(v, dict) and "secure" in v for v in k8s["config"].values())
    assert dev["config"]["serveform:backend"] == "local"  # the one stack the published passphrase serves


def test_make_k8s_up_generates_a_private_passphrase_file(tmp_path) -> None:
    target = tmp_path / "state" / "k8s-local.passphrase"
    make = subprocess.run(
        ["make", "-C", str(ROOT), f"K8S_PASSPHRASE_FILE={target}", str(target)],
        capture_output=True, text=True, timeout=60,
    )
    assert make.returncode == 0, make.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert len(target.read_text().strip()) >= 40 and PUBLISHED not in target.read_text()
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "k8s-up"], capture_output=True, text=True, timeout=60)
    up_lines = [line for line in dry.stdout.splitlines() if "serveform up --stack k8s" in line]
    assert up_lines and all("PULUMI_CONFIG_PASSPHRASE_FILE=" in line for line in up_lines)


def _stack_fixtures():
    """tests/stacks/conftest.py's project helpers (a real local stack on free ports)."""
    spec = importlib.util.spec_from_file_location("_stack_fixtures", ROOT / "tests" / "stacks" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(900)
def test_state_is_private_even_where_an_older_release_left_it_open() -> None:
    fixtures = _stack_fixtures()
    base = Path(tempfile.mkdtemp(prefix="sf-sec-"))  # short: the gateway's sockets live under it
    try:
        project = fixtures.make_project(base, "sectest")
        project.write_service(replicas=1)
        state = base / "backend"
        # What an older release left: a world-readable tree with history and a backup in it.
        old = state / ".pulumi" / "history" / "serveform" / "sectest"
        old.mkdir(parents=True)
        (old / "sectest-1.checkpoint.json").write_text("{}")
        for path in (state, *state.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        # No passphrase in the environment: a local stack on a state on this machine needs none.
        env = {k: v for k, v in project.env.items() if k != "PULUMI_CONFIG_PASSPHRASE"}
        up = subprocess.run(
            [str(Path(sys.executable).parent / "serveform"), "up", "--stack", "sectest", "--yes"],
            cwd=project.root, env=env, capture_output=True, text=True, timeout=600,
        )
        assert up.returncode == 0, up.stderr[-4000:]
        files = [p for p in state.rglob("*") if p.is_file()]
        assert any("history" in str(p) for p in files) and any(p.name.endswith(".json") for p in files)
        for path in (state, *state.rglob("*")):
            mode = stat.S_IMODE(path.lstat().st_mode)
            expected = 0o700 if path.is_dir() else 0o600
            assert mode == expected, f"{path}: {oct(mode)}, expected {oct(expected)}"
    finally:
        fixtures._clean_up(base, project)


def test_a_passphrase_file_reaches_the_vm_scaler_as_its_passphrase(tmp_path, monkeypatch) -> None:
    """The README recommends PULUMI_CONFIG_PASSPHRASE_FILE; a VM gateway's scaler still gets the passphrase."""
    from serveform.components._vm import scaler_environment

    secret_file = tmp_path / "passphrase"
    secret_file.write_text("from-a-file-0123456789\n")
    environ = {"PULUMI_BACKEND_URL": "s3://state", "PULUMI_CONFIG_PASSPHRASE_FILE": str(secret_file)}
    assert scaler_environment(environ) == {"PULUMI_BACKEND_URL": "s3://state", "PULUMI_CONFIG_PASSPHRASE": "from-a-file-0123456789"}
    both = {**environ, "PULUMI_CONFIG_PASSPHRASE": "explicit"}
    assert scaler_environment(both)["PULUMI_CONFIG_PASSPHRASE"] == "explicit"
