"""The cycle journal: one durable record per cycle, so that every cycle that started is reported exactly
once, even when the agent is killed, runs out of disk, or finds a corrupt state.

`state_dir/cycles/<run_id>.json` goes through three stages, each one atomic rename (temp, fsync, rename):
  1. begin: {run_id, pid, started_at, trigger, mode, phase} is written before anything can change the
     host, and updated (phase, commit, roles) before each Ansible run;
  2. commit: the same file with the finished report and the agent state after it. From here on the cycle
     counts as done: this is the one step that decides;
  3. publish: the report goes into the outbox, history/ and last_run.json, the state into state.json, then
     the file is removed. Every step is idempotent (the outbox keys reports by run_id, history by run_id).
At the start of the next cycle, under the cycle lock and before anything else, `recover` handles what an
earlier cycle left: a committed record is published again (a kill or an I/O error during step 3); a record
without a report is a cycle that was interrupted (killed, out of memory, power lost). It becomes a report
of its own (its run_id, status error, the phase it reached, and the processes of it that were still
running and were killed), published the same way. A record that cannot be read is moved aside and named
in the next report.

`GITOPS_AGENT_TEST_KILL_AT=<step>` (tests only) makes the process SIGKILL itself at that named step;
`kill_point` below is the one place that reads it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from agent import __version__, delivery
from agent import report as report_codec
from agent.config import AgentConfig
from agent.errors import AgentError, StateError
from agent.fsutil import atomic_write, describe_os_error, fsync_dir
from agent.redact import redact_url
from agent.report import ErrorItem, Mode, Phase, Report, SourceInfo, Status, Trigger
from agent.state import AgentState, StateStore, state_from_json, state_to_json

log = logging.getLogger(__name__)
KILL_ENV = "GITOPS_AGENT_TEST_KILL_AT"
CHANGING_PHASES = (Phase.APPLY, Phase.RECHECK)  # the host may have changed when a cycle stops here


def kill_point(step: str) -> None:
    """Test hook: SIGKILL this process when $GITOPS_AGENT_TEST_KILL_AT names `step` (comma-separated
    names allowed). Steps: begin, check, apply, recheck, commit, outbox, report, state, done; the same
    names prefixed with `recover-` while an earlier cycle's record is published."""
    wanted = os.environ.get(KILL_ENV)
    if wanted and step in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class CycleRecord:
    """What is known durably about a cycle while it runs (stage 1)."""

    run_id: str
    pid: int
    started_at: datetime
    trigger: Trigger
    mode: Mode
    phase: Phase = Phase.FETCH
    commit: str | None = None
    previous_commit: str | None = None
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Published:
    """The outcome of publishing one report: `spooled` is False when it could not go into the outbox (it
    must then be delivered from memory); `problems` name what could not be written, one line each."""

    report: Report
    spooled: bool
    problems: tuple[str, ...] = ()


@dataclass
class Recovery:
    published: list[Published] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # for the report of the cycle that recovers


def _record_json(record: CycleRecord) -> dict[str, Any]:
    data: dict[str, Any] = report_codec.encode(record)
    return data


def _record_from_json(data: Any) -> CycleRecord:
    try:
        return report_codec.decode(CycleRecord, data)
    except AgentError as e:
        raise ValueError(str(e)) from None


class Journal:
    def __init__(self, config: AgentConfig, store: StateStore, *, clock: Callable[[], datetime],
                 spool: Callable[[Report], None] | None = None) -> None:
        """`spool` puts a report into the outbox (agent.delivery.enqueue for `config` when None)."""
        self.config = config
        self.spool = spool or (lambda report: delivery.enqueue(config, report))
        self.store = store
        self.clock = clock
        self.dir = store.paths.cycles
        self.record: CycleRecord | None = None

    def _path(self, run_id: str) -> Path:
        return self.dir / f"{run_id}.json"

    def _write(self, record: CycleRecord, extra: dict[str, Any] | None = None) -> None:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        data = {**_record_json(record), **(extra or {})}
        atomic_write(self._path(record.run_id), json.dumps(data).encode())

    # -- stage 1 -------------------------------------------------------------------------------

    def begin(self, record: CycleRecord) -> str | None:
        """Record that a cycle started. Returns a problem (one line) when it could not be written: the
        cycle runs on, but a kill would then go unreported."""
        self.record = record
        try:
            self._write(record)
        except OSError as e:
            return f"the cycle record could not be written ({describe_os_error(e)}): a kill of this " \
                   "cycle would go unreported"
        kill_point("begin")
        return None

    def progress(self, **changes: Any) -> None:
        """Update the record (phase, commit, roles) before a step that can change the host; best effort."""
        if self.record is None:
            return
        self.record = replace(self.record, **changes)
        try:
            self._write(self.record)
        except OSError as e:
            log.error("cycle record not updated: %s", describe_os_error(e))
        kill_point(self.record.phase.value)

    # -- stage 2 and 3 -------------------------------------------------------------------------

    def commit(self, report: Report, state: AgentState | None, *, prefix: str = "") -> str | None:
        """The durable step: the record now holds the report and the state. A problem when it failed
        (the report is still published as far as the disk allows)."""
        record = self.record or CycleRecord(report.run_id, os.getpid(), report.started_at, report.trigger,
                                            report.mode)
        try:
            self._write(record, {"report": report_codec.to_dict(report),
                                 "state": None if state is None else state_to_json(state)})
        except OSError as e:
            return f"cycle record ({describe_os_error(e)})"
        kill_point(f"{prefix}commit")
        return None

    def publish(self, report: Report, state: AgentState | None, *, prefix: str = "", committed: bool = True,
                problems: tuple[str, ...] = ()) -> Published:
        """Outbox, history and last_run.json, state.json (when given), then the record goes. Each step is
        tried even when an earlier one failed. The record stays, for the next start to publish again,
        only while it holds the report (`committed`) and the report is nowhere else durable yet."""
        found = list(problems)
        spooled = self._spool(report, found)
        kill_point(f"{prefix}outbox")
        written = True
        try:
            self.store.write_report(report)
        except OSError as e:
            written = False
            found.append(f"last_run.json and history ({describe_os_error(e)})")
        kill_point(f"{prefix}report")
        if state is not None:
            try:
                self.store.save(state)
            except OSError as e:
                found.append(f"state.json ({describe_os_error(e)})")
        kill_point(f"{prefix}state")
        durable = spooled if self.config.collector.url else written
        if not found or durable or not committed:
            self._forget(report.run_id)
        kill_point(f"{prefix}done")
        return Published(report, spooled, tuple(found))

    def _spool(self, report: Report, problems: list[str]) -> bool:
        if not self.config.collector.url:
            return True
        last = self.store.last_report()
        if last is not None and last.run_id == report.run_id:
            return True  # last_run.json is written after the outbox: this report was spooled before
        try:
            self.spool(report)
        except (OSError, AgentError) as e:
            problems.append(f"the outbox ({describe_os_error(e) if isinstance(e, OSError) else e})")
            return False
        return True

    def _forget(self, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(run_id).unlink()
            fsync_dir(self.dir)
        self.record = None

    # -- at the next start ---------------------------------------------------------------------

    def recover(self, leftovers: list[str]) -> Recovery:
        """Publish what earlier cycles left (oldest first); `leftovers` names the processes of earlier
        cycles that were still running and were killed (they go into the interrupted cycle's report)."""
        result = Recovery()
        entries = self._entries(result)
        interrupted = [i for i, (_, data) in enumerate(entries) if "report" not in data]
        owner = interrupted[-1] if interrupted else None  # the leftovers belong to the newest of them
        for index, (record, data) in enumerate(entries):
            result.published.append(self._recover_one(record, data, leftovers if index == owner else []))
        if leftovers and owner is None:
            result.warnings.append(f"killed {len(leftovers)} process(es) an earlier cycle left running: "
                                   + "; ".join(leftovers))
        return result

    def _entries(self, result: Recovery) -> list[tuple[CycleRecord, dict[str, Any]]]:
        if not self.dir.is_dir():
            return []
        entries = []
        for path in self.dir.glob("*.json"):
            try:
                data = json.loads(path.read_bytes().decode("utf-8"))
                entries.append((_record_from_json({k: v for k, v in data.items()
                                                   if k not in ("report", "state")}), data))
            except (OSError, ValueError, AttributeError) as e:
                problem = f"{path}: unreadable cycle record ({type(e).__name__}: {str(e)[:200]})"
                try:
                    problem = f"{problem}: moved aside as {self.store.quarantine(path).name}; an earlier " \
                              "cycle may have gone unreported"
                except StateError as q:
                    problem = f"{problem}; {q}"
                result.warnings.append(problem)
        return sorted(entries, key=lambda e: e[0].started_at)

    def _recover_one(self, record: CycleRecord, data: dict[str, Any], killed: list[str]) -> Published:
        self.record = record
        if "report" in data:
            try:
                report = report_codec.from_dict(data["report"])
                state = state_from_json(data["state"]) if data.get("state") is not None else None
            except (AgentError, ValueError) as e:
                log.error("cycle record %s: its report is unreadable (%s); reported as interrupted",
                          record.run_id, e)
            else:
                log.warning("publishing the report of an earlier cycle: run_id=%s status=%s", report.run_id,
                            report.status.value)
                return self.publish(report, self._newer(state, record), prefix="recover-")
        report = self.interrupted(record, killed)
        log.error("earlier cycle interrupted: run_id=%s phase=%s", record.run_id, record.phase.value)
        problem = self.commit(report, None, prefix="recover-")
        return self.publish(report, None, prefix="recover-", committed=problem is None,
                            problems=(problem,) if problem else ())

    def _newer(self, state: AgentState | None, record: CycleRecord) -> AgentState | None:
        """The record's state, unless state.json already holds the outcome of a later cycle."""
        if state is None:
            return None
        try:
            current = self.store.load()
        except StateError:
            return state
        if current.updated_at and current.updated_at >= report_codec.format_time(record.started_at):
            return None
        return state

    def interrupted(self, record: CycleRecord, killed: list[str]) -> Report:
        """The report of a cycle that stopped before it reported."""
        message = (f"cycle interrupted at phase {record.phase.value}: the agent process (pid {record.pid}) "
                   "stopped before it reported (killed, out of memory, or the machine went down)")
        if record.phase in CHANGING_PHASES:
            message += "; the apply may have changed the host"
        if killed:
            message += f"; killed {len(killed)} process(es) it left running: " + "; ".join(killed)
        source = self.config.source
        return Report(
            run_id=record.run_id, host=self.config.host, agent_version=__version__, trigger=record.trigger,
            mode=record.mode, started_at=record.started_at, finished_at=max(self.clock(), record.started_at),
            source=SourceInfo(url=redact_url(source.url), ref=source.ref, commit=record.commit,
                              previous_commit=record.previous_commit),
            phase_reached=record.phase, status=Status.ERROR, roles=record.roles,
            errors=(ErrorItem(record.phase, message),),
            interval_s=int(self.config.schedule.interval_s), splay_s=int(self.config.schedule.splay_s),
        )


