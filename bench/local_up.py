"""How long `serveform up` takes on the dev stack: cold, with no change, and scaling by one.

Runs the repository's `dev` stack config and example service in a throwaway copy of the project
(its own state backend, free gateway ports), so it never touches a `make up` stack, and prints:

    cold up           first `up`: gateway, token, replicas, publication
    no-change up      `up` again with nothing changed
    scale-by-one up   `serveform scale chat N+1` (the scale `up` the scaler runs)

with each time's ratio to the cold `up`, then destroys the copy. Usage: `python bench/local_up.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STACK = "dev"
PASSPHRASE = "serveform-local-only"
TIMEOUT_SECONDS = 600


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _project(base: Path) -> tuple[Path, dict[str, str]]:
    import yaml

    root = base / "project"
    (root / "stacks" / "examples").mkdir(parents=True)
    (root / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text().replace("virtualenv: .venv", f"virtualenv: {sys.prefix}"))
    shutil.copy(ROOT / "__main__.py", root)
    for name in ("chat.dstack.yml", "chat_server.py"):
        shutil.copy(ROOT / "stacks" / "examples" / name, root / "stacks" / "examples" / name)
    config = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{STACK}.yaml").read_text())
    config.pop("encryptionsalt", None)
    gateway = dict(config["config"].get("serveform:gateway") or {})
    gateway.update(http_port=_free_port(), https_port=_free_port())
    config["config"]["serveform:gateway"] = gateway
    (root / "stacks" / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump(config))
    (base / "backend").mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "SERVEFORM_"))},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PULUMI_BACKEND_URL": (base / "backend").as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_SKIP_UPDATE_CHECK": "1",
        "PULUMI_PYTHON_CMD": sys.executable,
        "PULUMI_HOME": str(base / "pulumi-home"),
        "SERVEFORM_PROJECT_DIR": str(root),
    }
    return root, env


def _run(argv: list[str], root: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def _serveform(root: Path, env: dict[str, str], *args: str) -> float:
    return _run([sys.executable, "-m", "serveform.cli", args[0], "--stack", STACK, "--project-dir", str(root), *args[1:]], root, env)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="serveform-bench-") as tmp:
        root, env = _project(Path(tmp))
        pulumi = shutil.which("pulumi", path=env["PATH"])
        try:
            cold = _serveform(root, env, "up", "--yes")
            same = _serveform(root, env, "up", "--yes")
            outputs = subprocess.run(
                [pulumi, "stack", "output", "services", "--json", "--stack", STACK], cwd=root, env=env, capture_output=True, text=True, check=True
            )
            count = json.loads(outputs.stdout)[0]["replicas"]["count"]
            scale = _serveform(root, env, "scale", "chat", str(count + 1))
        finally:
            _serveform(root, env, "destroy", "--yes")
    print(f"local dev stack, `serveform up` wall time (replicas {count} -> {count + 1} for the scale step)")
    print(f"{'cold up':<18}{cold:8.2f} s   1.00x")
    print(f"{'no-change up':<18}{same:8.2f} s   {same / cold:.2f}x of cold")
    print(f"{'scale-by-one up':<18}{scale:8.2f} s   {scale / cold:.2f}x of cold")


if __name__ == "__main__":
    main()
