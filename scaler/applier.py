"""Applying decided replica counts to a stack: one worker per stack, coalescing, retrying.

`Applier` is the one-method seam between the daemon and Pulumi: run a scale `up` of the stack
with these counts. `PulumiApplier` does that through the Automation API on the project directory
(the program runs through the project's language host, so this module never imports the
components): the counts travel in the update's environment as a `ScaleRequest`, the program
rebuilds the stack from the last deployment's inputs with them (`serveform.stacks.replicas`), and
the update targets the services' replica resources. Nothing is written to the stack file, and
nothing of the working tree is applied. `ApplyWorker` runs one applier in one thread:

- `submit` records the newest desired count per service and returns at once; counts submitted
  while an `up` runs are merged, so the next `up` jumps straight to the newest counts;
- each change carries the count the scaler believed the stack had (`expected`): the program
  leaves a service alone whose count someone else changed since (`serveform scale`, a narrowed
  range), and `apply` returns the counts the stack really runs, which the scaler then follows;
- a locked stack (another `up` of the same stack, a person or CI) or a failed run is retried
  after an exponential backoff with jitter; a count stays pending until an `up` with it
  succeeds, so no decision is lost;
- a lock is cleared only when its owner is provably dead (a `file://` backend, this host, no
  such Pulumi process: an update killed with the scaler); a live owner's lock never is.

Error tree::

    ApplyError            an `up` (or the config write before it) failed; retried
    └── StackBusyError    the stack is locked by another update; retried
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .constants import (
    APPLY_BACKOFF_INITIAL_SECONDS,
    APPLY_BACKOFF_JITTER_RATIO,
    APPLY_BACKOFF_MAX_SECONDS,
    SCALER_TARGETS_OUTPUT,
)

__all__ = [
    "ApplyError",
    "ApplyWorker",
    "Applier",
    "PulumiApplier",
    "StackBusyError",
    "WorkerStats",
    "clear_dead_lock",
]

log = logging.getLogger("serveform.scaler.applier")


class ApplyError(RuntimeError):
    """Writing the counts or running `up` failed; the counts stay pending and are retried."""


class StackBusyError(ApplyError):
    """Another update holds the stack's lock (Pulumi's ConcurrentUpdateError)."""


class Applier(Protocol):
    """Applies replica counts to a stack."""

    def apply(
        self, counts: Mapping[str, int], *, message: str, expected: Mapping[str, int] | None = None
    ) -> Mapping[str, int] | None:
        """Run a scale `up` with these counts, each applied only where the stack still runs its
        `expected` count; return the counts the stack runs afterwards (None: as asked). Raise
        ApplyError on failure."""
        ...


@dataclass(frozen=True)
class WorkerStats:
    """Counters of one worker, for the daemon's /metrics."""

    attempts: int
    successes: int
    failures: int
    busy: int
    pending: Mapping[str, int]
    running: bool
    last_error: str | None


class ApplyWorker:
    """The single applier thread of one stack."""

    def __init__(
        self,
        applier: Applier,
        *,
        on_applied: Callable[[Mapping[str, int]], None] | None = None,
        backoff_initial_seconds: float = APPLY_BACKOFF_INITIAL_SECONDS,
        backoff_max_seconds: float = APPLY_BACKOFF_MAX_SECONDS,
        jitter_ratio: float = APPLY_BACKOFF_JITTER_RATIO,
        rng: random.Random | None = None,
    ) -> None:
        self._applier = applier
        self._on_applied = on_applied
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._jitter = jitter_ratio
        self._rng = rng or random.Random()
        self._cond = threading.Condition()
        self._pending: dict[str, int] = {}
        self._expected: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures_in_a_row = 0
        self._attempts = self._successes = self._failures = self._busy = 0
        self._running = False
        self._last_error: str | None = None
        self._reasons: dict[str, str] = {}

    # --- the daemon's side ----------------------------------------------------------------
    def submit(
        self,
        counts: Mapping[str, int],
        *,
        reasons: Mapping[str, str] | None = None,
        expected: Mapping[str, int] | None = None,
    ) -> None:
        """Make these the newest desired counts; returns at once.

        `expected` is the count each service had when the scaler decided; for coalesced
        decisions the first one counts, since that is what the stack still runs.
        """
        if not counts:
            return
        with self._cond:
            self._pending.update({s: int(n) for s, n in counts.items()})
            self._reasons.update(reasons or {})
            for service, count in (expected or {}).items():
                if service in counts:
                    self._expected.setdefault(service, int(count))
            self._cond.notify_all()

    def pending(self) -> dict[str, int]:
        with self._cond:
            return dict(self._pending)

    def stats(self) -> WorkerStats:
        with self._cond:
            return WorkerStats(
                attempts=self._attempts,
                successes=self._successes,
                failures=self._failures,
                busy=self._busy,
                pending=dict(self._pending),
                running=self._running,
                last_error=self._last_error,
            )

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="serveform-scaler-applier", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the current `up` (an `up` in flight is never interrupted)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is pending and no `up` runs (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    # --- the worker's side ----------------------------------------------------------------
    def run_once(self) -> float | None:
        """One attempt at applying everything pending.

        Returns None when nothing was pending or the attempt succeeded, else the backoff in
        seconds before the next attempt. The worker thread calls this; tests may call it directly.
        """
        with self._cond:
            if not self._pending:
                return None
            batch = dict(self._pending)
            expected = {s: self._expected[s] for s in batch if s in self._expected}
            reasons = {s: self._reasons.get(s, "") for s in batch}
            self._running = True
            self._attempts += 1
        message = "serveform scaler: " + "; ".join(
            f"{s}={n}" + (f" ({reasons[s]})" if reasons[s] else "") for s, n in sorted(batch.items())
        )
        try:
            result = self._applier.apply(batch, message=message, expected=expected or None)
        except Exception as exc:  # every failure is retried: a decision is never dropped
            busy = isinstance(exc, StackBusyError)
            with self._cond:
                self._running = False
                self._failures += 1
                self._busy += int(busy)
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._failures_in_a_row += 1
                delay = self._backoff(self._failures_in_a_row)
                self._cond.notify_all()
            log.warning(
                "%s applying %s; retrying in %.1fs: %s",
                "stack locked by another update" if busy else "update failed",
                _fmt(batch),
                delay,
                exc,
            )
            return delay
        with self._cond:
            self._running = False
            self._successes += 1
            self._failures_in_a_row = 0
            self._last_error = None
            for service, count in batch.items():
                # A newer count submitted meanwhile stays pending.
                if self._pending.get(service) == count:
                    del self._pending[service]
                    self._expected.pop(service, None)
            self._cond.notify_all()
        actual = {**batch, **{s: int(n) for s, n in (result or {}).items() if s in batch}}
        kept = {s: n for s, n in actual.items() if n != batch[s]}
        if kept:
            log.info("applied %s; kept counts set outside the scaler since its decision: %s", _fmt(batch), _fmt(kept))
        else:
            log.info("applied %s", _fmt(batch))
        if self._on_applied is not None:
            self._on_applied(actual)
        return None

    def _backoff(self, failures: int) -> float:
        base = min(self._backoff_max, self._backoff_initial * (2 ** (failures - 1)))
        return base * (1 + self._jitter * (2 * self._rng.random() - 1))

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._pending and not self._stop.is_set():
                    self._cond.wait()
            if self._stop.is_set():
                return
            try:
                delay = self.run_once()
            except Exception:  # on_applied failing must not kill the worker
                log.exception("applier callback failed")
                delay = self._backoff_initial
            if delay:
                self._stop.wait(delay)


def _fmt(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{s}={n}" for s, n in sorted(counts.items()))


class PulumiApplier:
    """Applies counts to one stack of the project with the real Pulumi CLI (Automation API).

    The workspace is the project directory and `up` runs the project's own program
    (`__main__.py`) through its language host, exactly as `pulumi up` would, with the counts in
    `SERVEFORM_SCALE`: a scale run, which rebuilds the stack from its last deployment's inputs.
    `source` says who decided ("scaler", or "manual" for `serveform scale`); the stack's
    `replicas` output records it.
    """

    def __init__(
        self,
        stack: str,
        project_dir: str | Path,
        *,
        env: Mapping[str, str] | None = None,
        use_targets: bool = True,
        on_output: Callable[[str], None] | None = None,
        source: str = "scaler",
    ) -> None:
        self.stack_name = stack
        self.project_dir = Path(project_dir)
        self._env = dict(env) if env is not None else None
        self._use_targets = use_targets
        self._on_output = on_output
        self._source = source
        self._stack = None

    def _select(self):
        if self._stack is None:
            from pulumi import automation as auto

            from ..stacks import engine

            env = self._env if self._env is not None else engine.workspace_env(self.project_dir, self.stack_name)
            command = auto.PulumiCommand(root=str(engine.find_pulumi().parent.parent))
            opts = auto.LocalWorkspaceOptions(work_dir=str(self.project_dir), env_vars=env, pulumi_command=command)
            self._stack = auto.select_stack(stack_name=self.stack_name, work_dir=str(self.project_dir), opts=opts)
        return self._stack

    def outputs(self) -> dict[str, object]:
        """The stack's outputs, secrets decrypted ({} before the first deployment)."""
        return {k: v.value for k, v in self._select().outputs().items()}

    def read_replicas(self) -> dict[str, int]:
        """The counts of the stack's last deployment (its `replicas` output)."""
        from ..stacks.replicas import REPLICAS_OUTPUT, counts_from_output

        return {s: c.count for s, c in counts_from_output(self.outputs().get(REPLICAS_OUTPUT)).items()}

    def targets(self, services: Collection[str]) -> list[str] | None:
        """URNs (or URN globs) the program exported for these services, or None for the whole stack."""
        try:
            outputs = self._select().outputs()
        except Exception as exc:  # no outputs yet (never deployed): update everything
            log.debug("no stack outputs: %s", exc)
            return None
        out = outputs.get(SCALER_TARGETS_OUTPUT)
        mapping = out.value if out is not None else None
        if not isinstance(mapping, Mapping):
            return None
        urns: list[str] = []
        for service in services:
            entry = mapping.get(service)
            if not entry:
                return None  # a service the program does not describe: be safe, update everything
            urns.extend(str(u) for u in entry)
        return sorted(set(urns))

    def apply(
        self, counts: Mapping[str, int], *, message: str, expected: Mapping[str, int] | None = None
    ) -> dict[str, int] | None:
        from pulumi import automation as auto

        from ..stacks.replicas import REPLICAS_OUTPUT, SCALE_ENV, ScaleRequest, counts_from_output

        request = ScaleRequest(
            counts={s: int(n) for s, n in counts.items()}, source=self._source, expected=dict(expected or {})
        )
        try:
            stack = self._select()
            target = self.targets(counts) if self._use_targets else None
            kwargs = {"target": target, "target_dependents": True} if target else {}
            # The CLI passes its environment to the program: the request reaches only this `up`.
            stack.workspace.env_vars[SCALE_ENV] = request.to_env()
            try:
                result = stack.up(message=message[:1000], color="never", on_output=self._on_output, **kwargs)
            finally:
                stack.workspace.env_vars.pop(SCALE_ENV, None)
        except auto.ConcurrentUpdateError as exc:
            cleared = self.clear_dead_lock()
            if cleared:
                raise ApplyError(f"stack {self.stack_name}: removed the lock of a dead update ({cleared}); retrying") from None
            raise StackBusyError(f"stack {self.stack_name}: {_tail(exc)}") from None
        except auto.CommandError as exc:
            raise ApplyError(f"stack {self.stack_name}: {_tail(exc)}") from None
        out = result.outputs.get(REPLICAS_OUTPUT)
        running = counts_from_output(out.value if out is not None else None)
        return {s: running[s].count for s in counts if s in running} or None

    def clear_dead_lock(self) -> str | None:
        """Remove the stack's lock when the update holding it is dead; returns what was removed.

        Only for a `file://` backend, and only a lock taken on this host whose process is gone
        (or is no longer a Pulumi process: the pid was reused). A lock of a live update, or of
        another host, is never touched: its owner may still be writing the state.
        """
        from ..stacks import engine

        env = self._env if self._env is not None else engine.workspace_env(self.project_dir, self.stack_name)
        return clear_dead_lock(env.get("PULUMI_BACKEND_URL", ""), _project_name(self.project_dir), self.stack_name)


def _project_name(project_dir: Path) -> str:
    import yaml

    try:
        data = yaml.safe_load((project_dir / "Pulumi.yaml").read_text()) or {}
    except OSError:
        return "*"
    return str(data.get("name") or "*")


def clear_dead_lock(backend_url: str, project: str, stack: str, *, hostname: str | None = None) -> str | None:
    """Remove dead locks of `project/stack` in a `file://` backend; returns a description or None."""
    import json
    import os
    import socket
    from urllib.parse import unquote, urlsplit

    url = urlsplit(backend_url)
    if url.scheme != "file":
        return None
    root = Path(unquote(url.path))
    host = hostname or socket.gethostname()
    removed = []
    for lock in sorted(root.glob(f".pulumi/locks/*/{project}/{stack}/*.json")):
        try:
            owner = json.loads(lock.read_text())
            pid = int(owner["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written or foreign: leave it
        if owner.get("hostname") != host or _is_pulumi_process(pid):
            continue
        for path in (lock, lock.with_name(lock.name + ".attrs")):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        removed.append(f"pid {pid} at {owner.get('timestamp', '?')}")
        log.warning("removed the lock of stack %s held by dead update pid %d (%s)", stack, pid, lock)
    return ", ".join(removed) or None


def _is_pulumi_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        try:
            import os

            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True  # alive, and no /proc to tell what it is: assume the owner
    argv0 = cmdline.split(b"\0", 1)[0]
    return argv0.endswith(b"pulumi") or b"pulumi" in Path(argv0.decode("utf-8", "replace")).name.encode()


def _tail(exc: Exception, limit: int = 600) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else "..." + text[-limit:]
