"""The agent's memory in state_dir: what it converged to, what drifted since when, and its reports.

Layout:
  state.json          AgentState (below)
  last_run.json       the last report, v1 format (what monitoring reads)
  history/            the last N reports, one file each, oldest pruned
  releases/, current  checked-out commits (owned by agent.source)
  repo/               the Git cache (agent.source)
  work/               ansible-runner private data dirs while a run is going (agent.runner)
Every file is written atomically (temp, fsync, rename) with mode 0600.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from agent import report as report_codec
from agent.errors import ReportError, StateError
from agent.fsutil import atomic_write
from agent.report import Pause, Report

log = logging.getLogger(__name__)
MAX_CONVERGED = 20


@dataclass(frozen=True)
class AgentState:
    last_commit: str | None = None  # the commit the last cycle ran against
    applied_commit: str | None = None  # the last commit an apply converged to
    converged: tuple[str, ...] = ()  # recent commits this host was seen in sync with (newest last)
    recurring: dict[str, tuple[str, ...]] = field(default_factory=dict)  # commit -> task keys
    drift_seen: dict[str, str] = field(default_factory=dict)  # task key -> first seen (RFC 3339)
    # commit -> task keys whose check fails only in check mode (the apply of that commit succeeded)
    check_only: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def with_converged(self, commit: str) -> AgentState:
        kept = (*tuple(c for c in self.converged if c != commit), commit)
        return replace(self, converged=kept[-MAX_CONVERGED:])


def _from_json(data: dict[str, Any]) -> AgentState:
    return AgentState(
        last_commit=data.get("last_commit"), applied_commit=data.get("applied_commit"),
        converged=tuple(data.get("converged") or ()),
        recurring={k: tuple(v) for k, v in (data.get("recurring") or {}).items()},
        drift_seen=dict(data.get("drift_seen") or {}),
        check_only={k: tuple(v) for k, v in (data.get("check_only") or {}).items()},
    )


class StateStore:
    def __init__(self, state_dir: Path, *, history: int = 50) -> None:
        self.dir = state_dir
        self.history = history

    def ensure(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StateError(f"state_dir {self.dir}: cannot create it ({e.strerror})") from e

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def last_run_file(self) -> Path:
        return self.dir / "last_run.json"

    @property
    def work_dir(self) -> Path:
        return self.dir / "work"

    @property
    def lock_file(self) -> Path:
        return self.dir / "lock"

    def load(self) -> AgentState:
        try:
            text = self.state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return AgentState()
        except OSError as e:
            raise StateError(f"{self.state_file}: cannot read ({e.strerror})") from e
        try:
            return _from_json(json.loads(text))
        except (ValueError, AttributeError, TypeError) as e:
            raise StateError(f"{self.state_file}: not valid agent state ({e})") from e

    def save(self, state: AgentState) -> None:
        atomic_write(self.state_file, json.dumps(asdict(state), indent=1).encode())

    def write_report(self, report: Report) -> Path:
        """last_run.json plus a bounded history; returns the history file."""
        data = report_codec.to_json(report, indent=1).encode()
        history_dir = self.dir / "history"
        stamp = report.finished_at.strftime("%Y%m%dT%H%M%S%fZ")
        path = history_dir / f"{stamp}-{report.run_id}.json"
        atomic_write(path, data)
        atomic_write(self.last_run_file, data)
        for old in sorted(history_dir.glob("*.json"))[:-self.history or None]:
            old.unlink(missing_ok=True)
        return path

    @property
    def pause_file(self) -> Path:
        return self.dir / "pause.json"

    def read_pause(self, now: datetime) -> Pause | None:
        """The pause in force, if any. An expired pause is removed (it expires by itself)."""
        try:
            pause = report_codec.decode(Pause, json.loads(self.pause_file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (ValueError, ReportError) as e:
            raise StateError(f"{self.pause_file}: not a valid pause ({e}); remove it or run resume") from e
        if pause.until is not None and pause.until <= now:
            self.pause_file.unlink(missing_ok=True)
            log.info("pause expired: reason=%r until=%s", pause.reason, pause.until)
            return None
        return pause

    def write_pause(self, pause: Pause) -> None:
        atomic_write(self.pause_file, json.dumps(report_codec.encode(pause), indent=1).encode())

    def clear_pause(self) -> bool:
        existed = self.pause_file.exists()
        self.pause_file.unlink(missing_ok=True)
        return existed

    def last_report(self) -> Report | None:
        try:
            text = self.last_run_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return report_codec.from_json(text)


def first_seen(state: AgentState, keys: list[str], now: datetime) -> tuple[AgentState, dict[str, datetime]]:
    """Remember when each drifting task was first seen; forget tasks that no longer drift."""
    stamp = report_codec.format_time(now)
    seen = {k: state.drift_seen.get(k, stamp) for k in keys}
    return replace(state, drift_seen=seen), {k: report_codec.parse_time(v) for k, v in seen.items()}
