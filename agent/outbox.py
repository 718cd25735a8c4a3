"""The durable outbox: every finished attempt's report waits here until the collector acknowledged it.

Layout of `state_dir/outbox/`:
    <seq>-<status>-<run_id>.json     pending reports, oldest first by name (seq = enqueue time in ns)
    quarantine/<same name>           reports the collector refused for good, each with <name>.reason
    compacted                        how many reports were compacted and not yet counted in a report

Files are written crash-safely (temp file, fsync, rename) with mode 0600. `put` is idempotent per run_id
(a report already waiting is not written twice), and raises StateError (one line) when the file system
refuses the write (full, read-only); delivering and removing reports needs no free space.
The outbox is bounded by `max_reports` and `max_bytes`; when over a bound it drops the least informative
reports first: an in_sync report followed by another in_sync report, then other in_sync reports, then
paused ones.
Reports with drift, corrections, failures or errors are never dropped (so the bounds can be exceeded
by those alone), and the newest report is never dropped. What was dropped is counted (including the
counts that dropped reports themselves carried), and `put()` carries that count into the next report
it writes (its `compacted` field): callers do not add it themselves.

Usage:
    outbox = Outbox(StatePaths(config.state_dir).outbox, max_reports=..., max_bytes=...)
    outbox.put(report)               # before any delivery is tried
    Sender.from_config(...).deliver_outbox(outbox)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.errors import StateError
from agent.fsutil import atomic_write, fsync_dir
from agent.report import Report, Status, to_json

log = logging.getLogger(__name__)

DEFAULT_MAX_REPORTS = 1000
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
STALE_TMP_S = 600
_NAME = re.compile(r"^(\d{20})-([a-z_]+)-([A-Za-z0-9._-]{1,80})\.json$")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")
_DROPPABLE_LATER = (Status.IN_SYNC.value, Status.PAUSED.value)


@dataclass(frozen=True)
class OutboxEntry:
    """One pending (or quarantined) report file."""

    path: Path
    run_id: str
    status: str
    size_bytes: int
    queued_at: datetime


@dataclass(frozen=True)
class QuarantinedEntry:
    entry: OutboxEntry
    reason: str
    quarantined_at: datetime | None


def choose_victim(statuses: Sequence[str]) -> int | None:
    """Index of the least informative report to drop (oldest first within a tier), or None.

    Never the last (newest) one; never drifted, corrected, failed or error reports."""
    candidates = range(len(statuses) - 1)
    for i in candidates:
        if statuses[i] == Status.IN_SYNC and statuses[i + 1] == Status.IN_SYNC:
            return i
    for tier in _DROPPABLE_LATER:
        for i in candidates:
            if statuses[i] == tier:
                return i
    return None


def _entry(path: Path) -> OutboxEntry | None:
    match = _NAME.match(path.name)
    if not match:
        return None
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    queued_at = datetime.fromtimestamp(int(match.group(1)) / 1e9, UTC)
    return OutboxEntry(path, match.group(3), match.group(2), size, queued_at)


class Outbox:
    """A directory of reports waiting for delivery. Safe against crashes at any point: a report is
    either fully in the outbox or not at all, and it leaves only by `remove` (after a 2xx) or
    `quarantine` (after a permanent refusal) or compaction (only in_sync/paused reports)."""

    def __init__(self, directory: Path, *, max_reports: int = DEFAULT_MAX_REPORTS,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_reports < 1 or max_bytes < 1:
            raise ValueError("outbox bounds must be at least 1")
        self.directory = directory
        self.quarantine_dir = directory / "quarantine"
        self.max_reports = max_reports
        self.max_bytes = max_bytes
        self._counter = directory / "compacted"

    def _ensure(self) -> None:
        try:
            self.quarantine_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.directory.chmod(0o700)
        except OSError as e:
            raise StateError(f"{self.directory}: cannot use the outbox directory ({e.strerror})") from e

    def put(self, report: Report) -> OutboxEntry:
        """Write `report` durably (adding the compacted count to it), then enforce the bounds."""
        self._ensure()
        waiting = next((e for e in self.pending() if e.run_id == _safe(report.run_id)), None)
        if waiting is not None:
            return waiting
        pending_compacted = self.compacted_count()
        if pending_compacted:
            report = dataclasses.replace(report, compacted=report.compacted + pending_compacted)
        path = self.directory / f"{self._next_seq():020d}-{report.status.value}-{_safe(report.run_id)}.json"
        try:
            atomic_write(path, to_json(report).encode("utf-8"), mode=0o600)
        except OSError as e:
            raise StateError(f"outbox {self.directory}: cannot write the report ({e.strerror})") from e
        if pending_compacted:
            try:
                self._write_counter(0)
            except OSError as e:  # the count is in the report now; at worst it is counted again later
                log.error("outbox: cannot reset the compacted count (%s)", e.strerror)
        self._clean_stale_tmp()
        self._enforce_bounds()
        entry = _entry(path)
        assert entry is not None
        return entry

    def pending(self) -> list[OutboxEntry]:
        """Reports waiting for delivery, oldest first."""
        if not self.directory.is_dir():
            return []
        found = (_entry(p) for p in sorted(self.directory.iterdir()))
        return [e for e in found if e is not None]

    def read(self, entry: OutboxEntry) -> bytes:
        return entry.path.read_bytes()

    def remove(self, entry: OutboxEntry) -> None:
        """Forget a delivered report (call only after the collector answered 2xx)."""
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        fsync_dir(self.directory)

    def quarantine(self, entry: OutboxEntry, reason: str) -> None:
        """Move a report the collector refused for good out of the queue, keeping the reason."""
        self._ensure()
        note = {"reason": reason, "at": datetime.now(UTC).isoformat(timespec="seconds")}
        target = self.quarantine_dir / entry.path.name
        try:
            atomic_write(target.with_name(target.name + ".reason"), json.dumps(note).encode(), mode=0o600)
        except OSError as e:  # out of space: move the report all the same, without its reason
            log.error("outbox: cannot record why %s was refused (%s): %s", entry.run_id, e.strerror, reason)
        try:
            entry.path.replace(target)
        except FileNotFoundError:
            return
        fsync_dir(self.quarantine_dir)
        fsync_dir(self.directory)

    def quarantined(self) -> list[QuarantinedEntry]:
        if not self.quarantine_dir.is_dir():
            return []
        result = []
        for path in sorted(self.quarantine_dir.iterdir()):
            entry = _entry(path)
            if entry is not None:
                reason, at = _read_reason(path.with_name(path.name + ".reason"))
                result.append(QuarantinedEntry(entry, reason, at))
        return result

    def requeue_quarantined(self) -> int:
        """Put every quarantined report back in the queue (e.g. after fixing the collector)."""
        moved = 0
        for q in self.quarantined():
            q.entry.path.replace(self.directory / q.entry.path.name)
            with contextlib.suppress(FileNotFoundError):
                q.entry.path.with_name(q.entry.path.name + ".reason").unlink()
            moved += 1
        if moved:
            fsync_dir(self.directory)
        return moved

    def compacted_count(self) -> int:
        """Reports dropped by compaction and not yet counted in a written report."""
        try:
            return int(self._counter.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _write_counter(self, value: int) -> None:
        atomic_write(self._counter, f"{value}\n".encode(), mode=0o600)

    def _next_seq(self) -> int:
        seq = time.time_ns()
        names = [e.path.name for e in self.pending()]
        if names:
            seq = max(seq, int(names[-1][:20]) + 1)
        return seq

    def _enforce_bounds(self) -> None:
        entries = self.pending()
        dropped = 0
        while len(entries) > self.max_reports or sum(e.size_bytes for e in entries) > self.max_bytes:
            victim = choose_victim([e.status for e in entries])
            if victim is None:
                log.warning("outbox %s is over its bounds with reports that are never dropped (%d reports)",
                            self.directory, len(entries))
                break
            dropped += 1 + _carried_count(entries[victim].path)
            with contextlib.suppress(FileNotFoundError):
                entries[victim].path.unlink()
            del entries[victim]
        if dropped:
            fsync_dir(self.directory)
            try:
                self._write_counter(self.compacted_count() + dropped)
            except OSError as e:
                log.error("outbox: cannot record %d compacted report(s) (%s)", dropped, e.strerror)
            log.info("outbox compacted %d in-sync/paused report(s)", dropped)

    def _clean_stale_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_S
        for path in self.directory.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()


def _safe(run_id: str) -> str:
    return _SAFE_ID.sub("_", run_id)[:80] or "run"


def _carried_count(path: Path) -> int:
    """The `compacted` count a report being dropped carried (so that count is not lost with it)."""
    try:
        value = json.loads(path.read_bytes()).get("compacted", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) and value > 0 else 0


def _read_reason(path: Path) -> tuple[str, datetime | None]:
    try:
        note = json.loads(path.read_text(encoding="utf-8"))
        return str(note.get("reason", "")), datetime.fromisoformat(note["at"]) if "at" in note else None
    except (OSError, ValueError, KeyError, AttributeError):
        return "(reason not recorded)", None


__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_REPORTS", "Outbox", "OutboxEntry", "QuarantinedEntry",
           "choose_victim"]
