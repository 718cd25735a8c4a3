"""The daemon's watch of managed paths (docs/watch.md): the hand-off files and the watcher thread.

Three files under state_dir (agent.paths):

- `watch.json`: written by the cycle (the child `gitops-agent run`) after its check: the paths each role
  managed in it (agent.watchpaths, version 1). A role-limited check (trigger `watch`) replaces the entries
  of its roles only. Read by the daemon after every cycle, which then re-arms the watcher: only the
  difference is added or removed, so a new commit that changes the managed set changes the watches.
- `watch-state.json`: written by the daemon: how many paths are watched, which are not (past the inotify
  limits) and why, the contested paths, and, while a watch check runs, the changed paths that started it.
  Read by `gitops-agent status` and by the cycle, which puts it in its report (`Report.watch`); it also
  lists the blind tasks per role (no path to watch, found by the scheduled check).
- `watch-contested.json`: written by the daemon when they change: the correction counts of watched paths
  (agent.watchrules.ContestedPaths), so that a restart or a rebuilt watcher does not forget a fight.

WatchService runs one thread that waits on the inotify fd (agent.watcher) and feeds the debouncer
(agent.watchrules); it sets the daemon's `wake` event when a change arrives, and the daemon's loop asks
`take()` for a due batch: the changed paths and the roles that manage them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent import watchpaths
from agent.errors import AgentError
from agent.fsutil import atomic_write
from agent.paths import StatePaths
from agent.report import ContestedPath, DriftKind, Report, Trigger, WatchInfo
from agent.watcher import Watcher, WatchState
from agent.watchpaths import PathSet, RolePaths
from agent.watchrules import CONTESTED_WINDOW_S, MAX_WAIT_S, ContestedPaths, Debouncer

log = logging.getLogger(__name__)
CHANGED_SHOWN = 20  # changed paths named in a report (all are counted)
POLL_S = 0.5  # after a failed read, the thread tries again this much later


# -- watch.json: the cycle's hand-off ------------------------------------------------------------

MAX_SET_BYTES = 64 << 20  # watch.json of 10,000 paths is about 1 MB; more is not a watch set


def _read_bytes(paths: StatePaths) -> bytes | None:
    """watch.json's bytes (at most MAX_SET_BYTES); None when there is none. AgentError naming the file
    when it cannot be read or is larger."""
    try:
        with paths.watch_set.open("rb") as f:
            data = f.read(MAX_SET_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AgentError(f"{paths.watch_set}: cannot read: {e.strerror}") from e
    if len(data) > MAX_SET_BYTES:
        raise AgentError(f"{paths.watch_set}: larger than {MAX_SET_BYTES} bytes: not a watch set")
    return data


def _parse(paths: StatePaths, data: bytes) -> dict[str, RolePaths]:
    """watch.json's bytes -> {role: RolePaths}; AgentError naming the file for bytes that are not UTF-8,
    not JSON (or nested too deep to parse), or not a watch set."""
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise AgentError(f"{paths.watch_set}: not JSON: {str(e)[:200]}") from e
    return watchpaths.from_json(parsed, str(paths.watch_set))


def read_set(paths: StatePaths) -> dict[str, RolePaths] | None:
    """The managed set of the last checks; None when there is none. AgentError naming the file when it
    cannot be read or is not a watch set."""
    data = _read_bytes(paths)
    return None if data is None else _parse(paths, data)


def write_set(paths: StatePaths, found: Mapping[str, RolePaths], *, limited_to: Iterable[str] | None,
              exclude: Iterable[str] = ()) -> None:
    """Write what a check found (`found`: {role: RolePaths}). A full check (`limited_to` None) replaces
    the set; a role-limited one replaces its roles' entries only. Roles in `exclude` are left out. The
    file is rewritten only when its bytes change."""
    excluded = set(exclude)
    table: dict[str, RolePaths] = {}
    if limited_to is not None:
        try:
            table = dict(read_set(paths) or {})
        except AgentError as e:
            log.warning("replacing an unreadable watch set: %s", e)
        for role in limited_to:
            table.pop(role, None)
    table.update(found)
    table = {role: entry for role, entry in table.items() if role not in excluded}
    data = (json.dumps(watchpaths.to_json(table), indent=1) + "\n").encode()
    with contextlib.suppress(OSError):
        if paths.watch_set.read_bytes() == data:
            return
    atomic_write(paths.watch_set, data, mode=0o644)


# -- watch-state.json: the daemon's side, for status and reports ----------------------------------

def read_state(paths: StatePaths) -> dict[str, Any] | None:
    """The daemon's watch state, or None when no daemon watches (or the file cannot be read)."""
    try:
        data = json.loads(paths.watch_state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def report_info(paths: StatePaths, trigger: Trigger) -> WatchInfo | None:
    """What a report says about the watch (None when no daemon watches): the counts, the fallback, the
    contested paths, and for a watch check the changed paths that started it."""
    data = read_state(paths)
    if data is None:
        return None
    try:
        changed = [str(p) for p in data.get("changed") or []] if trigger is Trigger.WATCH else []
        contested = data.get("contested") or {}
        blind = blind_tasks(data)
        return WatchInfo(
            watched=int(data.get("watched", 0)), directories=int(data.get("directories", 0)),
            unwatched=len(data.get("unwatched") or []),
            unwatched_roles=tuple(str(r) for r in data.get("unwatched_roles") or []),
            reason=str(data["reason"]) if data.get("reason") else None,
            changed=tuple(changed[:CHANGED_SHOWN]), changed_count=len(changed),
            contested=tuple(ContestedPath(str(p), int(n)) for p, n in sorted(contested.items())),
            blind=tuple(blind[:CHANGED_SHOWN]), blind_count=len(blind))
    except (TypeError, ValueError, AttributeError):
        return None


def blind_tasks(data: Mapping[str, Any]) -> list[str]:
    """The blind tasks of a watch state, as "role: task name" (their names were redacted by the cycle
    that wrote watch.json, like the report's task names)."""
    blind = data.get("blind") or {}
    if not isinstance(blind, Mapping):
        return []
    return [f"{role}: {task}" for role, tasks in sorted(blind.items()) if isinstance(tasks, list)
            for task in tasks]


def status_line(data: Mapping[str, Any]) -> str:
    """One line for `gitops-agent status`: 'watch: on, 12 paths in 3 directories; 4 paths NOT watched:
    <reason>: scheduled checks only for roles db, web; contested: /etc/app.conf (3 flips)'."""
    if not data.get("on"):
        return f"watch: off ({data.get('reason') or 'watch: false'}): scheduled checks only"
    line = f"watch: on, {data.get('watched', 0)} paths in {data.get('directories', 0)} directories"
    if data.get("trees"):
        line += f" ({data['trees']} trees watched below their top)"
    unwatched = data.get("unwatched") or []
    if unwatched:
        roles = ", ".join(data.get("unwatched_roles") or []) or "-"
        line += (f"; {len(unwatched)} paths NOT watched: {data.get('reason')}: scheduled checks only for "
                 f"roles {roles}")
    blind = blind_tasks(data)
    if blind:
        shown = ", ".join(blind[:5]) + (f" and {len(blind) - 5} more" if len(blind) > 5 else "")
        line += f"; {len(blind)} blind tasks (no path to watch: scheduled checks only): {shown}"
    contested = data.get("contested") or {}
    if contested:
        line += "; contested (not corrected on change): " + ", ".join(
            f"{p} ({n} flips)" for p, n in sorted(contested.items()))
    return line


# -- the daemon's watcher -------------------------------------------------------------------------

@dataclass(frozen=True)
class Batch:
    """Changed paths that are due for a check, and the roles that manage them."""

    paths: frozenset[str]
    roles: tuple[str, ...]
    contested: frozenset[str] = frozenset()  # paths this change made contested: the check only reports

    @property
    def check_only(self) -> bool:
        return bool(self.contested)


def _corrected_roles(report: Report | None) -> set[str]:
    """The roles in which a watch check found corrective drift (corrected, or reported in detect mode)."""
    if report is None:
        return set()
    return {d.role for d in report.drift if d.kind is DriftKind.CORRECTIVE and d.role}


class WatchService:
    """The watcher thread and the rules over it. `wake` is set when a change was seen (the daemon then
    asks `due_in()`/`take()`). Raises AgentError when inotify cannot be started at all."""

    def __init__(self, paths: StatePaths, wake: threading.Event, *, debounce_s: float = 2.0,
                 contested_flips: int = 3, contested_window_s: float = CONTESTED_WINDOW_S,
                 max_watches: int | None = None, clock: Callable[[], float] = time.monotonic,
                 exclude: Iterable[str] = ()) -> None:
        self.paths = paths
        # roles never watched (config watch_exclude), whatever watch.json holds: the set was written by a
        # cycle under the configuration of its time, and a reload that opts a role out must not wait for
        # the next check to stop watching it
        self.exclude = frozenset(exclude)
        self.wake = wake
        self.clock = clock
        self.watcher = Watcher(max_watches=max_watches)
        self.debouncer = Debouncer(quiet_s=debounce_s, max_wait_s=max(MAX_WAIT_S, debounce_s))
        self.contested = ContestedPaths(contested_flips, contested_window_s)
        self.table: dict[str, PathSet] = {}  # role -> its managed paths (compact: idle RSS)
        self.blind: dict[str, tuple[str, ...]] = {}  # role -> its tasks whose paths are not known
        self.state = WatchState(paths=0, directories=0)
        self.changed_now: frozenset[str] = frozenset()  # the paths of the watch check in progress
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # close() writes to this pipe to wake the thread: it sleeps in select() without a timeout, so an
        # idle daemon's watcher never wakes up for nothing (idle CPU, bench/watch.py)
        self._stop_r, self._stop_w = os.pipe()
        self._set_digest: str | None = None  # of the watch.json last read (not its text: 10,000 paths)
        self._fallback = False
        self._loaded = False  # the first reload takes the set as it is: the counts kept are for it
        self._contested_bytes: bytes | None = None
        self._thread = threading.Thread(target=self._loop, name="watcher", daemon=True)

    def start(self) -> None:
        self._load_contested()
        self.reload()
        self._thread.start()

    def _load_contested(self) -> None:
        """The correction counts the last daemon kept (a restart does not forget a fight). A bad file is
        one log line; counting then starts from zero."""
        try:
            data = self.paths.watch_contested.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("%s: cannot read: %s; counting contested paths from zero", self.paths.watch_contested,
                        e.strerror)
            return
        try:
            self.contested.load_json(json.loads(data.decode("utf-8")), self.clock(), time.time(),
                                     str(self.paths.watch_contested))
        except (ValueError, AgentError) as e:
            log.warning("%s; counting contested paths from zero", str(e)[:300])
            return
        self._contested_bytes = data

    def _save_contested(self) -> None:
        """Write the counts (atomically, only when they changed; no file while there are none)."""
        with self._lock:
            data = self.contested.to_json(self.clock(), time.time())
        if not data["paths"] and self._contested_bytes is None and not self.paths.watch_contested.exists():
            return
        encoded = json.dumps(data, indent=1).encode()
        if encoded == self._contested_bytes:
            return
        try:
            atomic_write(self.paths.watch_contested, encoded, mode=0o644)
            self._contested_bytes = encoded
        except OSError as e:
            log.warning("cannot write the contested paths: %s", e)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        if self._thread.is_alive():
            self._thread.join(POLL_S * 4)
        self.watcher.close()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1  # (a second close must not close a reused descriptor)
        self.paths.watch_state.unlink(missing_ok=True)

    def _loop(self) -> None:
        fd = self.watcher.fileno()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([fd, self._stop_r], [], [])
                if fd not in ready:
                    continue
                with self._lock:
                    counted = self._feed()
                if counted:
                    log.debug("watched paths changed: %s", ", ".join(sorted(counted)[:5]))
                    self.wake.set()
            except Exception as e:  # the fd closed under us (stopping), a broken read, or a bug: a dead
                if self._stop.is_set():  # thread would leave status saying "watch: on" and watch nothing
                    return
                log.error("the watcher failed: %s: %s; retrying", type(e).__name__, e)
                self._stop.wait(POLL_S)

    def _feed(self) -> list[str]:
        """Read what the kernel queued (without waiting) into the rules; the changes that count. The
        caller holds the lock."""
        changed = self.watcher.read(0)
        now = self.clock()
        return [p for p in changed if not self.contested.changed(p, now) and self.debouncer.changed(p, now)]

    # -- the managed set ------------------------------------------------------------------------

    def reload(self) -> None:
        """Read watch.json and re-arm the watcher for its paths (only the difference). A bad file keeps
        the previous table, with one log line."""
        try:
            data = _read_bytes(self.paths)
            digest = None if data is None else hashlib.sha256(data).hexdigest()
            if digest == self._set_digest and digest is not None:
                return
            table = {} if data is None else _parse(self.paths, data)
        except AgentError as e:
            log.error("%s; keeping the previous watch set", e)
            return
        table = {role: entry for role, entry in table.items() if role not in self.exclude}
        compact = {role: PathSet(entry.paths, entry.trees) for role, entry in table.items()}
        blind = {role: entry.blind for role, entry in table.items() if entry.blind}
        del table
        with self._lock:
            if self._loaded:  # a new commit changed these roles: count again from zero
                self.contested.forget(p for role, entry in compact.items() if self.table.get(role) != entry
                                      for p in entry)
                self.contested.forget_below(t for role, entry in compact.items()
                                            if self.table.get(role) != entry for t in entry.trees)
            self._loaded = True
            self.table, self.blind = compact, blind
            self.state = self.watcher.watch(PathSet(p for entry in compact.values() for p in entry),
                                            {t for entry in compact.values() for t in entry.trees})
        self._set_digest = digest
        del data
        self._say_fallback()
        self.write_state()

    def _unwatched_roles(self) -> list[str]:
        missing = set(self.state.unwatched)
        return sorted(role for role, entry in self.table.items() if any(p in entry for p in missing))

    def _say_fallback(self) -> None:
        """One warning line when the fallback to scheduled checks starts, one when it ends."""
        if self.state.unwatched and not self._fallback:
            log.warning("watch: %d managed paths NOT watched (%s): scheduled checks only for roles %s",
                        len(self.state.unwatched), self.state.reason, ", ".join(self._unwatched_roles()))
        elif not self.state.unwatched and self._fallback:
            log.info("watch: every managed path is watched again")
        self._fallback = bool(self.state.unwatched)
        log.info("watch: %d paths in %d directories", self.state.paths, self.state.directories)

    def state_data(self) -> dict[str, Any]:
        with self._lock:
            contested = self.contested.contested(self.clock())
        return {"on": True, "watched": self.state.paths, "directories": self.state.directories,
                "trees": self.state.trees,
                "unwatched": list(self.state.unwatched), "unwatched_roles": self._unwatched_roles(),
                "reason": self.state.reason, "contested": contested, "changed": sorted(self.changed_now),
                "blind": {role: list(tasks) for role, tasks in sorted(self.blind.items())}}

    def write_state(self) -> None:
        try:
            atomic_write(self.paths.watch_state, json.dumps(self.state_data(), indent=1).encode(), mode=0o644)
        except OSError as e:
            log.warning("cannot write the watch state: %s", e)
        self._save_contested()

    # -- batches and cycles ---------------------------------------------------------------------

    def due_in(self) -> float | None:
        """Seconds until the pending batch is due (0 when due), None when nothing is pending."""
        with self._lock:
            due = self.debouncer.due_at()
        return None if due is None else max(0.0, due - self.clock())

    def take(self) -> Batch | None:
        """The due batch (forgotten here), or None. A path that the agent's watch checks already
        corrected `contested_flips` times within the window and that changed again is contested now:
        the batch's check only reports (the daemon runs it check-only), and its later changes start no
        check (scheduled checks still correct it)."""
        with self._lock:
            now = self.clock()
            changed = self.debouncer.take(now)
            if not changed:
                return None
            roles = watchpaths.roles_of(changed, self.table)
            contested = frozenset(p for p in changed if self.contested.flipped(p, now))
        for path in sorted(contested):
            log.warning("watch: %s is contested: it changed again after %d corrections within %gs; its "
                        "changes no longer start checks (scheduled checks only)", path,
                        self.contested.flips, self.contested.window_s)
        return Batch(changed, tuple(sorted(roles)), contested)

    def cycle_started(self, batch: Batch | None) -> None:
        """A cycle starts: its changes of what it checks are its own (a full check: all paths)."""
        with self._lock:
            covered = None if batch is None else PathSet(
                (p for r in batch.roles for p in self.table.get(r, ())),
                (t for r in batch.roles for t in self.table.get(r, PathSet()).trees))
            self.debouncer.cycle_started(self.clock(), covered)
            self.changed_now = batch.paths if batch is not None else frozenset()
        self.write_state()

    def cycle_ended(self, batch: Batch | None, report: Report | None) -> None:
        """A cycle ended: its own changes stop counting after the grace; for a watch check, the changed
        paths of roles with corrective drift count as corrected (the contested rule); then re-arm."""
        with self._lock:
            # The child has exited, so every event of its own writes is in the kernel's queue by now:
            # read them while they still count as the cycle's own. Left to the thread, a thread starved
            # past the grace (a loaded machine) would take the agent's apply for a hand edit.
            if self._feed():
                self.wake.set()
            now = self.clock()
            self.debouncer.cycle_ended(now)
            self.changed_now = frozenset()
            if batch is not None:
                drifted = _corrected_roles(report)
                for path in batch.paths - batch.contested:
                    if any(path in self.table.get(r, ()) for r in drifted):
                        self.contested.corrected(path, now)
        self.reload()
        self.write_state()
