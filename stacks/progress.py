"""A one-line progress display of an `up`, `refresh` or `destroy` on the Automation API path.

Plain `pulumi up` draws its own tree; through the Automation API the engine only hands over
text and structured events (`on_event`). `Progress` turns the events into counts — resources
done out of those the engine has started a step for so far (the program registers its
resources as it runs, so the total grows until it has finished) — and the steps still running,
oldest first: what the update waits on. `TerminalProgress` redraws that as a single line on a
terminal and prints warnings and errors above it; where stdout is not a terminal the caller
prints nothing but its final summary.

    [  12s] 7/11 resources done · waiting on chat-replica-1 (create, 9s), gateway-process (update, 2s)
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["Progress", "TerminalProgress", "progress_line"]

REDRAW_INTERVAL_SECONDS = 0.5
"""How often the line is redrawn while nothing happens, so the elapsed times keep moving."""
_WAITING_SHOWN = 3
# The stack and providers are not waited on either (the stack finishes last, always).
_NOT_WAITED_ON = ("pulumi:pulumi:Stack", "pulumi:providers:")


def _custom(meta: Any) -> bool:
    """Components finish when their children do; only real resources are waited on."""
    state = meta.new or meta.old
    return bool(getattr(state, "custom", True)) if state is not None else True


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


@dataclass
class Progress:
    """Counts of one update, fed with Automation API engine events. Time is passed in."""

    clock: Callable[[], float] = time.monotonic
    started_at: float = field(default=0.0)
    seen: dict[str, str] = field(default_factory=dict)
    """urn -> operation of every resource a step started for."""
    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    running: dict[str, float] = field(default_factory=dict)
    """urn -> when its step started, for steps not finished yet."""

    def __post_init__(self) -> None:
        if not self.started_at:
            self.started_at = self.clock()

    def feed(self, event: Any) -> None:
        """Take one `pulumi.automation.events.EngineEvent` into account."""
        pre = getattr(event, "resource_pre_event", None)
        if pre is not None and pre.metadata is not None:
            meta = pre.metadata
            self.seen[meta.urn] = getattr(meta.op, "value", str(meta.op))
            if _custom(meta) and not meta.type.startswith(_NOT_WAITED_ON) and self.seen[meta.urn] != "same":
                self.running.setdefault(meta.urn, self.clock())
            return
        outputs = getattr(event, "res_outputs_event", None)
        if outputs is not None and outputs.metadata is not None:
            self._finish(outputs.metadata.urn)
            self.done.add(outputs.metadata.urn)
            return
        failed = getattr(event, "res_op_failed_event", None)
        if failed is not None and failed.metadata is not None:
            self._finish(failed.metadata.urn)
            self.failed.add(failed.metadata.urn)

    def _finish(self, urn: str) -> None:
        self.running.pop(urn, None)
        self.seen.setdefault(urn, "same")

    def line(self, width: int = 120) -> str:
        """The progress line, cut to ``width`` characters."""
        return progress_line(self, self.clock(), width)


def progress_line(progress: Progress, now: float, width: int = 120) -> str:
    text = f"[{now - progress.started_at:5.0f}s] {len(progress.done)}/{len(progress.seen)} resources done"
    if progress.failed:
        text += f", {len(progress.failed)} failed"
    waiting = sorted(progress.running.items(), key=lambda item: item[1])
    if waiting:
        shown = ", ".join(f"{_name(urn)} ({progress.seen.get(urn, '?')}, {now - since:.0f}s)" for urn, since in waiting[:_WAITING_SHOWN])
        more = f" and {len(waiting) - _WAITING_SHOWN} more" if len(waiting) > _WAITING_SHOWN else ""
        text += f" · waiting on {shown}{more}"
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


class TerminalProgress:
    """Draws a `Progress` as one line on a terminal, rewritten in place; thread-safe.

    ``on_event`` goes to the Automation API (it is called from the SDK's event thread); a
    background thread redraws every REDRAW_INTERVAL_SECONDS so elapsed times move while a step
    runs. Warnings and errors from the engine are printed above the line.
    """

    def __init__(self, stream: TextIO, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.progress = Progress(clock=clock)
        self._stream = stream
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._redraw_loop, name="serveform-progress", daemon=True)
        self._drawn = False
        self._last = ""

    def __enter__(self) -> "TerminalProgress":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            self._draw()
            if self._drawn:
                self._stream.write("\n")
                self._stream.flush()

    def on_event(self, event: Any) -> None:
        with self._lock:
            diagnostic = getattr(event, "diagnostic_event", None)
            if diagnostic is not None and diagnostic.severity in ("warning", "error") and not diagnostic.ephemeral:
                self._clear()
                where = f"{_name(diagnostic.urn)}: " if diagnostic.urn else ""
                self._stream.write(f"{diagnostic.severity}: {where}{diagnostic.message.rstrip()}\n")
            self.progress.feed(event)
            self._draw()

    def _redraw_loop(self) -> None:
        while not self._stop.wait(REDRAW_INTERVAL_SECONDS):
            with self._lock:
                self._draw()

    def _clear(self) -> None:
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._last = ""

    def _draw(self) -> None:
        width = shutil.get_terminal_size((120, 24)).columns - 1
        line = self.progress.line(width)
        if line == self._last:
            return
        self._stream.write("\r\x1b[K" + line)
        self._stream.flush()
        self._drawn = True
        self._last = line
