"""The CLI's progress display on a terminal (rich): a line per phase when it ends, and while a phase
runs a live line with its current task, the task counts by outcome so far and the elapsed time.

Only agent.cli uses this, and only when stderr is a terminal: piped or under systemd, nothing changes.
NO_COLOR is honoured (by rich). The line texts come from pure functions, tested on their own.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from rich.console import Console, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from agent.progress import PhaseDone, PhaseStarted, ProgressEvent, TaskDone, TaskStarted

OUTCOME_ORDER = ("ok", "changed", "failed", "unreachable", "skipped")
WAITING = {"fetch": "fetching from Git", "plan": "reading the inventory, loading each role's playbook"}
PHASE_WIDTH = 8


def counts_text(counts: Counter[str]) -> str:
    """'3 tasks: 2 ok, 1 changed' (outcomes in a fixed order, zeros left out); '' before any task."""
    total = sum(counts.values())
    if not total:
        return ""
    parts = ", ".join(f"{counts[o]} {o}" for o in OUTCOME_ORDER if counts[o])
    return f"{total} task{'s' if total != 1 else ''}: {parts}"


def running_line(phase: str, role: str, task: str, counts: Counter[str], elapsed_s: float) -> str:
    """The live line: 'check    web / Install nginx   3 tasks: 2 ok, 1 changed   12.3s'."""
    where = f"{role} / {task}" if role and task else task or role or WAITING.get(phase, "starting Ansible")
    done = counts_text(counts)
    return f"{phase:<{PHASE_WIDTH}} {where}" + (f"   {done}" if done else "") + f"   {elapsed_s:.1f}s"


def done_line(phase: str, detail: str, counts: Counter[str], elapsed_s: float | None) -> str:
    """A finished phase: 'check    4 tasks: 3 ok, 1 changed   5.1s'."""
    text = detail or counts_text(counts) or "done"
    return f"{phase:<{PHASE_WIDTH}} {text}" + (f"   {elapsed_s:.1f}s" if elapsed_s is not None else "")


class ProgressView:
    """A `Progress` callback for Cycle that draws on `console` (stderr). Call close() at the end."""

    def __init__(self, console: Console, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.clock = clock
        self.phase: str | None = None
        self.started = 0.0
        self.role = ""
        self.task = ""
        self.counts: Counter[str] = Counter()
        self.spinner = Spinner("dots")
        self.live: Live | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if isinstance(event, PhaseStarted):
            self._start(event.phase)
        elif isinstance(event, PhaseDone):
            self._done(event)
        elif isinstance(event, TaskStarted):
            self.role, self.task = event.role, event.task
        elif isinstance(event, TaskDone):
            self.counts[event.outcome] += 1

    def __rich__(self) -> RenderableType:
        line = running_line(self.phase or "", self.role, self.task, self.counts, self.clock() - self.started)
        self.spinner.update(text=Text(line))
        return self.spinner

    def _start(self, phase: str) -> None:
        self._stop_live()
        self.phase, self.started = phase, self.clock()
        self.role = self.task = ""
        self.counts = Counter()
        self.live = Live(self, console=self.console, transient=True, refresh_per_second=8,
                         redirect_stdout=False, redirect_stderr=True)
        self.live.start()

    def _done(self, event: PhaseDone) -> None:
        elapsed = self.clock() - self.started if event.phase == self.phase else None
        counts = self.counts if event.phase == self.phase else Counter()
        self._stop_live()
        style = "red" if counts["failed"] or counts["unreachable"] else ""
        self.console.print(Text(done_line(event.phase, event.detail, counts, elapsed), style=style),
                           highlight=False)
        self.phase = None

    def _stop_live(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def close(self) -> None:
        self._stop_live()
