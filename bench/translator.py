"""Benchmark: serveform's translator against dstack's own parser, same files, same run.

    python bench/translator.py [--files 1000] [--seed 7] [--backend local|aws|gcp|azure]

Generates N service files covering the format's syntaxes, then parses all of them with

- serveform: ``compile_file`` (YAML with positions → ServiceSpec → ServicePlan), and
- dstack 0.22.5: ``yaml.safe_load`` + ``parse_apply_configuration`` — what ``dstack apply``
  does with a file — installed from PyPI into the benchmark's own virtualenv
  (``~/.cache/serveform/bench-dstack``, created on first use).

``--backend`` picks the stack backend serveform compiles for: `local` (default) builds the plan
without offers, a cloud backend also matches every file against the offers catalog — work dstack's
parser does not do at all. Each side runs in a fresh process: one timed pass (files per wall-clock second and per CPU
second), one pass under tracemalloc (peak bytes allocated while parsing), plus the process's
peak RSS. The last line
prints the ratios; serveform should be at least as fast.

``--ensure-dstack`` only creates the environment and prints its interpreter (the translator
tests use it to compare normalised output with dstack's).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DSTACK_VERSION = "0.22.5"
DSTACK_ENV = Path(os.environ.get("SERVEFORM_BENCH_DSTACK_ENV", Path.home() / ".cache" / "serveform" / "bench-dstack"))
ROOT = Path(__file__).resolve().parents[1]


def ensure_dstack_python() -> Path:
    """The interpreter of a virtualenv holding dstack==0.22.5 (created once, under a lock)."""
    python = DSTACK_ENV / "bin" / "python"
    marker = DSTACK_ENV / f".dstack-{DSTACK_VERSION}"
    if marker.exists():
        return python
    DSTACK_ENV.parent.mkdir(parents=True, exist_ok=True)
    with open(DSTACK_ENV.parent / "bench-dstack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(DSTACK_ENV)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"dstack=={DSTACK_VERSION}"],
                check=True,
            )
            marker.touch()
    return python


# ---------------------------------------------------------------- the corpus


def generate(directory: Path, count: int, seed: int) -> list[Path]:
    """`count` valid service files mixing every syntax the translator accepts."""
    rng = random.Random(seed)
    gpus = ["A100", "A10G,A100", "A100:80GB", "A100:2", "24GB..40GB:2", "A100:40GB:2", "nvidia", "80GB:2", "L4:1..2", "24GB", "H100:8"]
    paths = []
    for index in range(count):
        lines = ["type: service", f"name: svc-{index}"]
        if rng.random() < 0.3:
            lines.append(f"image: ghcr.io/example/server:{rng.randint(1, 9)}.{rng.randint(0, 9)}")
        else:
            lines.append(f'python: "{rng.choice(["3.10", "3.11", "3.12"])}"')
            if rng.random() < 0.2:
                lines.append("nvcc: true")
        if rng.random() < 0.5:
            lines += ["env:", f"  - MODEL=org/model-{index}", "  - PORT=8000", f"  - LOG_LEVEL={rng.choice(['info', 'debug'])}"]
        else:
            lines += ["env:", f"  MODEL: org/model-{index}", "  WORKERS: 4"]
        lines += ["commands:", "  - pip install vllm", f"  - vllm serve org/model-{index} --port 8000"]
        lines.append(rng.choice(["port: 8000", 'port: "8080:8000"']))
        lines += ["resources:", f"  gpu: {rng.choice(gpus)}", f"  memory: {rng.choice(['16GB..', '32GB..64GB', '8GB'])}", "  disk: 200GB.."]
        if rng.random() < 0.3:
            lines.append("  shm_size: 16GB")
        if rng.random() < 0.6:
            lines += [f"replicas: {rng.randint(0, 1)}..{rng.randint(2, 8)}", "scaling:", "  metric: rps", f"  target: {rng.randint(1, 50)}"]
            if rng.random() < 0.5:
                lines += ["  scale_up_delay: 1m", "  scale_down_delay: 10m", "  window: 60s"]
        else:
            lines.append(f"replicas: {rng.randint(1, 3)}")
        if rng.random() < 0.5:
            lines.append(f"model: org/model-{index}")
        elif rng.random() < 0.5:
            lines += ["model:", "  type: chat", f"  name: org/model-{index}", "  format: openai", "  prefix: /v1"]
        if rng.random() < 0.4:
            lines += ["probes:", "  - type: http", "    url: /health", "    interval: 10s", "    timeout: 5s"]
        if rng.random() < 0.3:
            lines += ["rate_limits:", "  - prefix: /v1", f"    rps: {rng.randint(1, 20)}", "    burst: 5"]
        if rng.random() < 0.3:
            lines += ["volumes:", f"  - cache-{index}:/root/.cache", "  - name: models", "    path: /models"]
        if rng.random() < 0.4:
            lines.append(f"spot_policy: {rng.choice(['spot', 'on-demand', 'auto'])}")
        if rng.random() < 0.3:
            lines.append(f"max_price: {rng.choice([1.5, 2, 4.25])}")
        if rng.random() < 0.2:
            lines.append("auth: false")
        path = directory / f"svc-{index:04d}.dstack.yml"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


# ---------------------------------------------------------------- workers (run in fresh processes)


def _worker(kind: str, listing: str, backend: str = "local") -> None:
    import resource
    import tracemalloc

    files = Path(listing).read_text().split("\n")
    if kind == "serveform":
        from serveform.translator import CompileContext, TranslatorError, compile_file

        context = CompileContext(backend=backend)  # type: ignore[arg-type]

        def parse(path: str) -> None:
            try:
                compile_file(path, context)
            except TranslatorError:
                pass  # on a cloud backend some GPU specs have no offer; the work is done either way
    else:
        import yaml
        from dstack._internal.core.models.configurations import parse_apply_configuration

        def parse(path: str) -> None:
            with open(path) as f:
                parse_apply_configuration(yaml.safe_load(f))

    parse(files[0])  # imports and schema builds happen before the clock starts
    start, cpu_start = time.perf_counter(), time.process_time()
    for path in files:
        parse(path)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    tracemalloc.start()
    for path in files:
        parse(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"files": len(files), "seconds": elapsed, "cpu_seconds": cpu, "peak_traced_bytes": peak, "peak_rss_bytes": rss_kb * 1024}))


def _run(kind: str, python: Path, listing: Path, backend: str = "local") -> dict[str, float]:
    env = dict(os.environ)
    if kind == "dstack":
        env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--worker", kind, str(listing), backend],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir() if kind == "dstack" else ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ensure-dstack", action="store_true", help="create the dstack environment and print its python")
    parser.add_argument("--backend", choices=("local", "aws", "gcp", "azure"), default="local", help="the backend serveform compiles for")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "LISTING", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return 0
    dstack_python = ensure_dstack_python()
    if args.ensure_dstack:
        print(dstack_python)
        return 0
    with tempfile.TemporaryDirectory(prefix="serveform-bench-") as tmp:
        files = generate(Path(tmp), args.files, args.seed)
        listing = Path(tmp) / "files.txt"
        listing.write_text("\n".join(str(p) for p in files))
        ours = _run("serveform", Path(sys.executable), listing, args.backend)
        theirs = _run("dstack", dstack_python, listing)
    rows = ((f"serveform ({args.backend})", ours), (f"dstack {DSTACK_VERSION}", theirs))
    print(f"{'parser':<20}{'files':>7}{'files/s':>10}{'files/CPU-s':>13}{'peak traced MiB':>17}{'peak RSS MiB':>14}")
    for name, r in rows:
        print(
            f"{name:<20}{r['files']:>7}{r['files'] / r['seconds']:>10.0f}{r['files'] / r['cpu_seconds']:>13.0f}"
            f"{r['peak_traced_bytes'] / 2**20:>17.2f}{r['peak_rss_bytes'] / 2**20:>14.1f}"
        )
    speed = (ours["files"] / ours["seconds"]) / (theirs["files"] / theirs["seconds"])
    cpu_speed = (ours["files"] / ours["cpu_seconds"]) / (theirs["files"] / theirs["cpu_seconds"])
    memory = ours["peak_traced_bytes"] / theirs["peak_traced_bytes"]
    rss = ours["peak_rss_bytes"] / theirs["peak_rss_bytes"]
    # CPU time is the fairer ratio on a shared machine: the two runs see different contention.
    print(
        f"ratio serveform/dstack: speed {speed:.2f}x (wall), {cpu_speed:.2f}x (CPU); "
        f"peak traced memory {memory:.2f}x; peak RSS {rss:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
