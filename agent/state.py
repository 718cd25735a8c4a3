"""The agent's memory in state_dir: what it converged to, what drifted since when, and its reports.

The layout of state_dir (every path in it, and which module owns it) is agent.paths; this module owns
state.json, last_run.json, history/, pause.json and the quarantined copies.

A state file that cannot be read (truncated, empty, binary, the wrong JSON shape, a bad time) is never
fatal: `quarantine` renames it to `<name>.corrupt-<UTC time>` next to where it was, the agent starts from a
fresh one, and the cycle that found it reports an error naming the kept copy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import report as report_codec
from agent.errors import ReportError, StateError
from agent.fsutil import atomic_write, fsync_dir
from agent.paths import StatePaths
from agent.report import Pause, Report

log = logging.getLogger(__name__)
MAX_CONVERGED = 20
KEEP_QUARANTINED = 5  # per file name; older quarantined copies are removed


@dataclass(frozen=True)
class HeldCommit:
    """A new commit the rollout gate holds (docs/rollout.md): its check is not repeated while the gate's
    answer (``gate``: "state: reason", decided with the plan digest ``plan``) stays the same; the drift
    reported meanwhile is that of the check that started at ``checked_at`` (RFC 3339)."""
    commit: str
    gate: str
    checked_at: str
    plan: str | None = None


@dataclass(frozen=True)
class AgentState:
    last_commit: str | None = None  # the commit the last cycle ran against
    applied_commit: str | None = None  # the last commit an apply converged to
    converged: tuple[str, ...] = ()  # recent commits this host was seen in sync with (newest last)
    recurring: dict[str, tuple[str, ...]] = field(default_factory=dict)  # commit -> task keys
    drift_seen: dict[str, str] = field(default_factory=dict)  # task key -> first seen (RFC 3339)
    # commit -> task keys whose check fails only in check mode (the apply of that commit succeeded)
    check_only: dict[str, tuple[str, ...]] = field(default_factory=dict)
    updated_at: str | None = None  # start (RFC 3339) of the cycle whose outcome this is (agent.journal)
    held: HeldCommit | None = None  # the new commit the rollout gate holds, as last checked

    def with_converged(self, commit: str) -> AgentState:
        kept = (*tuple(c for c in self.converged if c != commit), commit)
        return replace(self, converged=kept[-MAX_CONVERGED:])

    def after_apply(self, commit: str, *, recurring: set[str], check_only: set[str]) -> AgentState:
        """The state after an apply of `commit` converged: `commit` is the applied one and among the
        converged ones; the task keys that changed again right after it (`recurring`) and those that fail
        only in check mode (`check_only`) are remembered for it, and kept for the other commits this
        host converged to (dropped for commits no longer remembered as converged)."""
        def kept(per_commit: dict[str, tuple[str, ...]], keys: set[str]) -> dict[str, tuple[str, ...]]:
            found = {k: v for k, v in per_commit.items() if k in self.converged and k != commit}
            return {**found, commit: tuple(sorted(keys))} if keys else found

        return replace(self.with_converged(commit), applied_commit=commit,
                       recurring={**kept(self.recurring, recurring), commit: tuple(sorted(recurring))},
                       check_only=kept(self.check_only, check_only))


def _text(value: Any, where: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _texts(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return tuple(_text(v, f"{where}[{i}]") for i, v in enumerate(value))


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def state_from_json(data: Any) -> AgentState:
    """Validate a decoded state.json (every field's type, every time); ValueError names the field."""
    if not isinstance(data, dict):
        raise ValueError(f"expected an object, got {type(data).__name__}")
    seen = {_text(k, "drift_seen key"): _text(v, f"drift_seen[{k!r}]")
            for k, v in _mapping(data.get("drift_seen"), "drift_seen").items()}
    for key, stamp in seen.items():
        try:
            report_codec.parse_time(stamp)
        except ValueError:
            raise ValueError(f"drift_seen[{key!r}]: {stamp[:40]!r} is not an RFC 3339 time") from None
    return AgentState(
        last_commit=_text(data.get("last_commit"), "last_commit", optional=True),
        applied_commit=_text(data.get("applied_commit"), "applied_commit", optional=True),
        converged=_texts(data.get("converged"), "converged"),
        recurring={_text(k, "recurring key"): _texts(v, f"recurring[{k!r}]")
                   for k, v in _mapping(data.get("recurring"), "recurring").items()},
        drift_seen=seen,
        check_only={_text(k, "check_only key"): _texts(v, f"check_only[{k!r}]")
                    for k, v in _mapping(data.get("check_only"), "check_only").items()},
        updated_at=_text(data.get("updated_at"), "updated_at", optional=True),
        held=_held(data.get("held")),
    )


def _held(value: Any) -> HeldCommit | None:
    if value is None:
        return None
    data = _mapping(value, "held")
    checked_at = _text(data.get("checked_at"), "held.checked_at")
    try:
        report_codec.parse_time(checked_at)
    except ValueError:
        raise ValueError(f"held.checked_at: {checked_at[:40]!r} is not an RFC 3339 time") from None
    return HeldCommit(commit=_text(data.get("commit"), "held.commit"),
                      gate=_text(data.get("gate"), "held.gate"),
                      checked_at=checked_at, plan=_text(data.get("plan"), "held.plan", optional=True))


def state_to_json(state: AgentState) -> dict[str, Any]:
    return asdict(state)


def _read_json(path: Path) -> Any:
    """The JSON in `path`, or FileNotFoundError; StateError (one line) for anything unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise StateError(f"{path}: cannot read it ({e.strerror})") from e
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise StateError(f"{path}: not text (binary content)") from None
    except ValueError as e:
        what = "empty" if not data.strip() else f"not valid JSON ({e})"
        raise StateError(f"{path}: {what}") from None


class StateStore:
    def __init__(self, state_dir: Path, *, history: int = 50) -> None:
        self.dir = state_dir
        self.paths = StatePaths(state_dir)
        self.history = history

    def ensure(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StateError(f"state_dir {self.dir}: cannot create it ({e.strerror})") from e

    @property
    def state_file(self) -> Path:
        return self.paths.state

    @property
    def last_run_file(self) -> Path:
        return self.paths.last_run

    @property
    def work_dir(self) -> Path:
        return self.paths.work

    @property
    def lock_file(self) -> Path:
        return self.paths.lock

    @property
    def history_dir(self) -> Path:
        return self.paths.history

    # -- quarantine ----------------------------------------------------------------------------

    def quarantine(self, path: Path, now: datetime | None = None) -> Path:
        """Rename an unreadable state file to `<name>.corrupt-<UTC time>` (kept for forensics; the newest
        KEEP_QUARANTINED per name stay). Returns the new path. Raises StateError when it cannot."""
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        try:
            path.replace(target)
            fsync_dir(path.parent)
        except OSError as e:
            raise StateError(f"{path}: cannot move it aside ({e.strerror})") from e
        for old in sorted(path.parent.glob(f"{path.name}.corrupt-*"))[:-KEEP_QUARANTINED]:
            with contextlib.suppress(OSError):
                old.unlink()
        log.error("unreadable state file quarantined: file=%s kept_as=%s", path, target.name)
        return target

    def _quarantined(self, path: Path, error: StateError, now: datetime) -> str:
        """Quarantine `path` after `error`; the one-line message for the report."""
        try:
            kept = self.quarantine(path, now)
        except StateError as e:
            return f"{error}; {e}"
        return f"{error}: moved aside as {kept.name}"

    # -- state.json ----------------------------------------------------------------------------

    def load(self) -> AgentState:
        """state.json; a missing file is a fresh state. StateError (one line) when it is unreadable."""
        try:
            data = _read_json(self.state_file)
        except FileNotFoundError:
            return AgentState()
        try:
            return state_from_json(data)
        except ValueError as e:
            raise StateError(f"{self.state_file}: not valid agent state ({e})") from None

    def load_or_quarantine(self, now: datetime) -> tuple[AgentState, str | None]:
        """state.json, or (when unreadable) a fresh state and the problem, the file quarantined."""
        try:
            return self.load(), None
        except StateError as e:
            return AgentState(), self._quarantined(self.state_file, e, now)

    def peek_last_commit(self) -> str | None:
        """The last commit from state.json, None when there is none or the file is unreadable (the next
        cycle quarantines it and says so)."""
        try:
            return self.load().last_commit
        except StateError as e:
            log.warning("%s", e)
            return None

    def save(self, state: AgentState) -> None:
        atomic_write(self.state_file, json.dumps(state_to_json(state), indent=1).encode())

    # -- reports -------------------------------------------------------------------------------

    def write_report(self, report: Report) -> Path:
        """history/<time>-<run_id>.json, then last_run.json; returns the history file. Idempotent: the
        same report gives the same history file."""
        data = report_codec.to_json(report, indent=1).encode()
        stamp = re.sub(r"[-:.]", "", report_codec.format_time(report.finished_at))
        path = self.history_dir / f"{stamp}-{report.run_id}.json"  # as precise as the report's own time
        atomic_write(path, data)
        for twin in self.history_dir.glob(f"*-{report.run_id}.json"):  # one file per run, whatever wrote it
            if twin != path:
                twin.unlink(missing_ok=True)
        atomic_write(self.last_run_file, data)
        for old in sorted(self.history_dir.glob("*.json"))[:-self.history or None]:
            old.unlink(missing_ok=True)
        return path

    def report_of(self, run_id: str) -> Report | None:
        """The report of run `run_id` from history/; None when it is not there (pruned) or unreadable."""
        for path in self.history_dir.glob(f"*-{run_id}.json"):
            try:
                return report_codec.from_dict(_read_json(path))
            except (OSError, StateError, ReportError) as e:
                log.warning("%s: %s", path, e)
        return None

    def last_report(self) -> Report | None:
        """The last report; None when there is none, or when last_run.json cannot be read (logged):
        an unreadable file is "no previous report", never a reason to stop."""
        try:
            return self._last_report()
        except StateError as e:
            log.warning("%s; treated as no previous report", e)
            return None

    def _last_report(self) -> Report | None:
        try:
            data = _read_json(self.last_run_file)
        except FileNotFoundError:
            return None
        try:
            return report_codec.from_dict(data)
        except ReportError as e:
            raise StateError(f"{self.last_run_file}: not a valid report ({e})") from None

    def check_last_run(self, now: datetime) -> str | None:
        """Quarantine an unreadable last_run.json; the problem, or None when it is fine."""
        try:
            self._last_report()
        except StateError as e:
            return self._quarantined(self.last_run_file, e, now)
        return None

    # -- pause.json ----------------------------------------------------------------------------

    @property
    def pause_file(self) -> Path:
        return self.paths.pause

    def read_pause(self, now: datetime) -> Pause | None:
        """The pause in force, if any. An expired pause is removed (it expires by itself). StateError (one
        line) when pause.json cannot be read."""
        try:
            data = _read_json(self.pause_file)
        except FileNotFoundError:
            return None
        try:
            pause = report_codec.decode(Pause, data)
        except ReportError as e:
            raise StateError(f"{self.pause_file}: not a valid pause ({e}); run `gitops-agent resume` "
                             "or pause again") from None
        if pause.until is not None and pause.until <= now:
            self.pause_file.unlink(missing_ok=True)
            log.info("pause expired: reason=%r until=%s", pause.reason, pause.until)
            return None
        return pause

    def read_pause_or_quarantine(self, now: datetime) -> tuple[Pause | None, str | None]:
        """The pause in force; an unreadable pause.json is quarantined and replaced by a pause of applies
        (it was most likely a pause: applies stay stopped until `gitops-agent resume`), with the problem."""
        try:
            return self.read_pause(now), None
        except StateError as e:
            problem = self._quarantined(self.pause_file, e, now)
        pause = Pause(reason=f"pause.json was unreadable and was moved aside; applies stay paused until "
                             f"`gitops-agent resume` ({problem})", by="gitops-agent", since=now)
        try:
            self.write_pause(pause)
        except OSError as e:
            problem += f"; the replacement pause could not be written ({e.strerror})"
        return pause, problem

    def write_pause(self, pause: Pause) -> None:
        atomic_write(self.pause_file, json.dumps(report_codec.encode(pause), indent=1).encode())

    def clear_pause(self) -> bool:
        existed = self.pause_file.exists()
        self.pause_file.unlink(missing_ok=True)
        return existed


def first_seen(state: AgentState, keys: list[str], now: datetime) -> tuple[AgentState, dict[str, datetime]]:
    """Remember when each drifting task was first seen; forget tasks that no longer drift."""
    stamp = report_codec.format_time(now)
    seen = {k: state.drift_seen.get(k, stamp) for k in keys}
    return replace(state, drift_seen=seen), {k: report_codec.parse_time(v) for k, v in seen.items()}
