"""Pure: reports -> text for people (the CLI prints what these return)."""

from __future__ import annotations

import difflib
from datetime import UTC, datetime

from agent.report import DriftItem, Pause, Report, Status

_COLOURS = {Status.IN_SYNC: "32", Status.CORRECTED: "32", Status.DRIFTED: "33", Status.PAUSED: "33",
            Status.FAILED: "31", Status.ERROR: "31"}


def _paint(text: str, code: str, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour else text


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "-"


def _ago(when: datetime, now: datetime) -> str:
    seconds = int((now - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(seconds, 0)}s ago"


def summary(report: Report, *, colour: bool = False) -> str:
    """A few lines: status, commit, roles, drift items, the rollout line (and the drift of the converged
    commit enforced while a new one is held), errors and warnings."""
    status = _paint(report.status.value, _COLOURS[report.status], colour)
    src = report.source
    lines = [f"{report.host}: {status} at {_short(src.commit)} ({src.subject or 'no commit'})",
             f"  roles: {', '.join(report.roles) or '-'}   mode: {report.mode.value}   "
             f"phase reached: {report.phase_reached.value}   took {report.durations_s.total or 0:.1f}s"]
    if report.apply is not None:
        lines.append(f"  applied: {report.apply.changed} change(s), "
                     f"{len(report.apply.failed_tasks)} failed task(s)")
    lines.extend(_drift_lines(report.drift))
    rollout = rollout_text(report)
    if rollout is not None and report.rollout is not None:
        lines.append(f"  {rollout}")
        enforced = report.rollout.enforced
        if enforced is not None and enforced.commit is not None:  # the converged commit's own drift
            lines.extend(f"  {line}" for line in _drift_lines(enforced.drift))
    if report.apply is not None:
        lines.extend(f"  failed: {t.task}{f' [{t.item}]' if t.item else ''}: {t.message}"
                     for t in report.apply.failed_tasks)
    lines.extend(f"  error ({e.phase.value}): {e.message}" for e in report.errors)
    lines.extend(f"  warning: {w}" for w in report.warnings)
    return "\n".join(lines)


def _drift_lines(items: tuple[DriftItem, ...]) -> list[str]:
    lines = []
    for item in items:
        paths = ", ".join(d.path for d in item.diffs) or "-"
        lines.append(f"  {item.kind.value:<12} {item.role or '-'} / {_task(item)}  [{item.module}] {paths}")
        if item.reason:
            lines.append(f"  {'':<12} {item.reason}")
    return lines


def _task(item: DriftItem) -> str:
    """The task as people find it: its Ansible role, name and loop item."""
    name = f"{item.ansible_role} : {item.task}" if item.ansible_role else item.task
    return f"{name} [{item.item}]" if item.item else name


def unified(item: DriftItem, *, colour: bool = False) -> str:
    """The drift item's diffs as unified diffs."""
    where = f" ({item.task_path})" if item.task_path else ""
    out = [f"--- {item.kind.value}: {item.role or '-'} / {item.play} / {_task(item)} [{item.module}]{where}"]
    if item.reason:
        out.append(f"  {item.reason}")
    for diff in item.diffs:
        before = (diff.before or "").splitlines(keepends=True)
        after = (diff.after or "").splitlines(keepends=True)
        for line in difflib.unified_diff(before, after, f"{diff.path} (host)", f"{diff.path} (git)"):
            text = line.rstrip("\n")
            if colour and text.startswith(("+", "-")) and not text.startswith(("+++", "---")):
                text = _paint(text, "32" if text.startswith("+") else "31", True)
            out.append(text)
    if not item.diffs and not item.reason:
        out.append("  (no diff: check mode cannot tell what this task would do)"
                   if item.kind.value == "unverifiable" else "  (the module gave no diff)")
    return "\n".join(out)


def pause_text(pause: Pause | None) -> str:
    if pause is None:
        return "not paused"
    what = "checks and applies" if pause.checks_too else "applies"
    until = f"until {pause.until:%Y-%m-%d %H:%M}Z" if pause.until else "until resumed"
    return f"{what} paused by {pause.by or 'unknown'} {until}: {pause.reason}"


def status_text(report: Report, now: datetime, pause: Pause | None) -> str:
    drift = len(report.drift)
    return (f"last run: {report.finished_at:%Y-%m-%d %H:%M:%S}Z ({_ago(report.finished_at, now)}), "
            f"{report.status.value}, commit {_short(report.source.commit)}, "
            f"{drift} drift item(s)\n{pause_text(pause)}")


def _in(when: datetime, now: datetime) -> str:
    seconds = int((when - now).total_seconds())
    if seconds <= 0:
        return "due now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"in {seconds // size}{unit}"
    return f"in {seconds}s"


def daemon_text(*, pid: int | None, alive: bool, started_at: datetime | None, next_check_at: datetime | None,
                cycle_trigger: str | None, cycle_started_at: datetime | None, now: datetime) -> str:
    """'daemon: running (pid 812, started 2h ago); next full check 12:30:05Z (in 14m)', plus the cycle in
    progress; or 'daemon: not running'."""
    if pid is None:
        return "daemon: not running"
    if not alive:
        return f"daemon: not running (pid {pid} of its status file is gone: it did not stop cleanly)"
    text = f"daemon: running (pid {pid}" + (f", started {_ago(started_at, now)})" if started_at else ")")
    if cycle_trigger is not None:
        since = f" for {_ago(cycle_started_at, now).removesuffix(' ago')}" if cycle_started_at else ""
        text += f"; a cycle is running ({cycle_trigger}){since}"
    if next_check_at is not None:
        text += f"; next full check {next_check_at:%Y-%m-%d %H:%M:%S}Z ({_in(next_check_at, now)})"
    return text


def delivery_text(*, collector: bool, waiting: int, error: str | None, at: datetime | None,
                  now: datetime) -> str:
    """The outbox line of `status`: how many reports wait, and the last delivery problem if any."""
    if not collector:
        return "outbox: no collector configured (collector.url): reports stay on this host"
    text = f"outbox: {waiting} report(s) waiting for the collector"
    if error and at is not None:
        text += f"; warning: the last delivery failed {_ago(at, now)}: {error}"
    return text


def warning_lines(warnings: list[str], *, colour: bool = False) -> str:
    """Warnings under a run's summary (things that did not block the run: a collector that is down)."""
    return "\n".join(f"  {_paint('warning', '33', colour)}: {w}" for w in warnings)


def rollout_text(report: Report) -> str | None:
    """'rollout: wave rest, waiting: wave canary 3/5 converged, needs 95% (enforcing 1a2b3c4d5e6f: in sync)'
    for a report with a rollout block (docs/rollout.md); None without one. The parentheses name the
    converged commit the host enforced while holding and that check's outcome (or that it has none yet),
    and when the held commit was last checked if not in this run (its check was not repeated)."""
    info = report.rollout
    if info is None:
        return None
    text = f"rollout: wave {info.wave}, {info.reason}"
    if info.plan_digest:
        text += f"; plan {info.plan_digest[:12]}"
    enforced, notes = info.enforced, []
    if info.enforcing_commit:
        same = enforced is not None and enforced.commit == info.enforcing_commit
        done = f": {enforced.reason}" if same and enforced is not None else ""
        notes.append(f"enforcing {info.enforcing_commit[:12]}{done}")
    elif enforced is not None:
        notes.append(enforced.reason)
    commit = report.source.commit
    if info.checked_at is not None and info.checked_at != report.started_at and commit:
        notes.append(f"{commit[:12]} last checked {info.checked_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}")
    return text + (f" ({'; '.join(notes)})" if notes else "")

