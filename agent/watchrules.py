"""Pure: when watched changes become a check, and when a path is contested (docs/watch.md, 4 to 6).

Both classes take the time from their callers (`now`, seconds on a monotonic clock), so they are tested
without sleeping and the daemon drives them from its own clock.

- Debouncer: changes of watched paths -> one batch of paths once it has been quiet for `quiet_s` (at
  the latest `max_wait_s` after the batch's first change); changes of the paths a running cycle covers,
  until `grace_s` after it ended, are the agent's own and are dropped.
- ContestedPaths: a path that the agent's watch-triggered corrections put back again and again (another
  writer undoes them) becomes contested after `flips` flips within `window_s`; its changes no longer start
  checks until it has been quiet for a whole window, or its role's commit changes.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError

DEBOUNCE_S = 2.0
MAX_WAIT_S = 30.0
OWN_CHANGES_GRACE_S = 1.0
CONTESTED_FLIPS = 3
CONTESTED_WINDOW_S = 3600.0


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise AgentError(f"{name} must be a positive number of seconds, got {value!r}")
    return value


@dataclass(frozen=True)
class _Cycle:
    covered: Container[str] | None  # None: every path (a full check)
    ended_at: float | None = None


class Debouncer:
    """Coalesce changes of watched paths into batches, and drop the agent's own changes."""

    def __init__(self, quiet_s: float = DEBOUNCE_S, max_wait_s: float = MAX_WAIT_S,
                 grace_s: float = OWN_CHANGES_GRACE_S) -> None:
        self.quiet_s = _positive("watch debounce", quiet_s)
        self.max_wait_s = _positive("watch max wait", max_wait_s)
        if self.max_wait_s < self.quiet_s:
            raise AgentError(f"watch max wait ({max_wait_s:g}s) must not be shorter than the debounce "
                             f"({quiet_s:g}s)")
        self.grace_s = grace_s
        self._pending: dict[str, float] = {}  # path -> first change seen in this batch
        self._last = 0.0
        self._cycle: _Cycle | None = None

    def _own(self, path: str, now: float) -> bool:
        cycle = self._cycle
        if cycle is None:
            return False
        if cycle.ended_at is not None and now > cycle.ended_at + self.grace_s:
            self._cycle = None
            return False
        return cycle.covered is None or path in cycle.covered

    def changed(self, path: str, now: float) -> bool:
        """A watched path changed at `now`. False when the change is the running cycle's own (dropped)."""
        if self._own(path, now):
            return False
        self._pending.setdefault(path, now)
        self._last = now
        return True

    def cycle_started(self, now: float, covered: Collection[str] | None = None) -> None:
        """A cycle starts; it checks (and may apply) the paths `covered` (None: all). Their pending changes
        are its to see, and their changes until cycle_ended() + grace are its own. A `covered` that is
        neither a list nor a tuple is kept as it is, so a set whose `in` answers for the paths below its
        trees (agent.watchpaths.PathSet) covers those too."""
        del now  # the start needs no time: everything from here until the end is the cycle's
        paths: Container[str] | None = covered
        if isinstance(covered, list | tuple):
            paths = frozenset(covered)
        self._cycle = _Cycle(paths)
        self._pending = {} if paths is None else {p: t for p, t in self._pending.items() if p not in paths}

    def cycle_ended(self, now: float) -> None:
        if self._cycle is not None:
            self._cycle = _Cycle(self._cycle.covered, now)

    def due_at(self) -> float | None:
        """When the pending batch is due (quiet long enough, or waited the most), None when none is."""
        if not self._pending:
            return None
        first = min(self._pending.values())
        return min(self._last + self.quiet_s, first + self.max_wait_s)

    def take(self, now: float) -> frozenset[str]:
        """The batch of changed paths if it is due at `now` (and forget it), else an empty set."""
        due = self.due_at()
        if due is None or now < due:
            return frozenset()
        batch = frozenset(self._pending)
        self._pending = {}
        return batch


@dataclass
class _History:
    corrections: list[float] = field(default_factory=list)
    contested_since: float | None = None
    last_change: float = 0.0


class ContestedPaths:
    """Count flips per path: a flip is a watch-triggered correction of a path that the agent already
    corrected within `window_s` (someone put it back). At `flips` flips the path is contested."""

    def __init__(self, flips: int = CONTESTED_FLIPS, window_s: float = CONTESTED_WINDOW_S) -> None:
        if flips < 1:
            raise AgentError(f"watch contested flips must be 1 or more, got {flips!r}")
        self.flips = flips
        self.window_s = _positive("watch contested window", window_s)
        self._paths: dict[str, _History] = {}

    def _flips(self, history: _History, now: float) -> int:
        history.corrections = [t for t in history.corrections if now - t < self.window_s]
        return max(0, len(history.corrections) - 1)

    def corrected(self, path: str, now: float) -> bool:
        """A watch-triggered check found `path` drifted at `now` and corrected it (enforce mode) or
        reported it (detect mode). True when this makes it contested."""
        history = self._paths.setdefault(path, _History())
        history.corrections.append(now)
        history.last_change = now
        if history.contested_since is None and self._flips(history, now) >= self.flips:
            history.contested_since = now
            return True
        return False

    def flipped(self, path: str, now: float) -> bool:
        """A change of `path` at `now` is about to start a watch check. True when the agent corrected it
        `flips` times within the window already, so this change (its `flips`-th flip: a change after a
        correction) makes it contested now: the check then only reports it."""
        history = self._paths.get(path)
        if history is None or history.contested_since is not None:
            return False
        if len([t for t in history.corrections if now - t < self.window_s]) < self.flips:
            return False
        history.corrections.append(now)
        history.contested_since = history.last_change = now
        return True

    def is_contested(self, path: str, now: float) -> bool:
        """Contested until a whole window passed without a change of it."""
        history = self._paths.get(path)
        if history is None or history.contested_since is None:
            return False
        if now - history.last_change >= self.window_s:
            del self._paths[path]
            return False
        return True

    def changed(self, path: str, now: float) -> bool:
        """A change of `path` was seen. True when it must not start a check (the path is contested);
        the change keeps it contested for another window."""
        if not self.is_contested(path, now):
            return False
        self._paths[path].last_change = now
        return True

    def contested(self, now: float) -> dict[str, int]:
        """{path: flips in the window} of the paths contested at `now`, for the report and status."""
        return {path: max(self.flips, self._flips(h, now)) for path, h in list(self._paths.items())
                if self.is_contested(path, now)}

    def forget(self, paths: Iterable[str]) -> None:
        """A new commit changed the roles of `paths`: the conflict may be fixed; count again from zero."""
        for path in paths:
            self._paths.pop(path, None)

    def forget_below(self, tops: Iterable[str]) -> None:
        """forget() every counted path below the trees `tops` (a new commit changed their roles)."""
        prefixes = tuple(top.rstrip("/") + "/" for top in tops)
        if prefixes:
            self.forget([path for path in self._paths if path.startswith(prefixes)])

    # -- kept across restarts (the daemon writes it to state_dir/watch-contested.json) -------------

    def to_json(self, now: float, wall_now: float) -> dict[str, Any]:
        """The counts as JSON, times as wall-clock seconds since the epoch (`wall_now` is `now` on that
        clock): a monotonic clock does not carry across a reboot, a wall clock does."""
        def wall(t: float) -> float:
            return round(wall_now - (now - t), 3)
        paths = {path: {"corrections": [wall(t) for t in h.corrections if now - t < self.window_s],
                        "contested_since": None if h.contested_since is None else wall(h.contested_since),
                        "last_change": wall(h.last_change)}
                 for path, h in sorted(self._paths.items()) if now - h.last_change < self.window_s}
        return {"version": 1, "paths": paths}

    def load_json(self, data: Any, now: float, wall_now: float, source: str = "contested paths") -> None:
        """Take the counts of `to_json` (replacing these); AgentError naming `source` for anything else.
        Entries older than the window are dropped."""
        def mono(t: Any) -> float:
            if isinstance(t, bool) or not isinstance(t, int | float):
                raise AgentError(f"{source}: times must be numbers")
            return now - (wall_now - float(t))
        entries = data.get("paths") if isinstance(data, Mapping) and data.get("version") == 1 else None
        if not isinstance(entries, Mapping):
            raise AgentError(f"{source}: not a version 1 set of contested paths")
        loaded: dict[str, _History] = {}
        for path, entry in entries.items():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("corrections"), list):
                raise AgentError(f"{source}: {path!r}: expected corrections, contested_since, last_change")
            since = entry.get("contested_since")
            history = _History([mono(t) for t in entry["corrections"]],
                               None if since is None else mono(since), mono(entry.get("last_change")))
            if now - history.last_change < self.window_s:
                loaded[str(path)] = history
        self._paths = loaded
