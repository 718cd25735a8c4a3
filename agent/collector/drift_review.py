"""Drift items and their lifecycle: pure functions from values to values, no clock, no I/O.

A drift item is one episode of one task drifting on one host, keyed by `ItemKey`. `apply_report` takes a
host's current items and one new report and says what changes: items to insert (new episodes), to update
(seen again) and resolved. Its rules, and why, are in docs/drift-review.md (sections 1 to 3).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import msgspec
from msgspec.structs import replace

from agent.report import DriftItem, DriftKind, Phase, Report, Status

MAX_COMMITS = 20  # distinct commits kept per item (most recent last); commit_count counts them all
MAX_KINDS = 20  # kind changes kept per item
COMPLETE_STATUSES = frozenset({Status.IN_SYNC, Status.DRIFTED, Status.CORRECTED, Status.PAUSED})
FIXED_BY_APPLY = frozenset({DriftKind.CORRECTIVE, DriftKind.INTENTIONAL})  # what a corrected run fixed
_LINE = re.compile(r":\d+$")


class ItemState(enum.StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    ACCEPTED = "accepted"
    RESOLVED = "resolved"


class Resolution(enum.StrEnum):
    CORRECTED = "corrected"  # the agent applied and the recheck no longer saw it
    ABSENT = "absent"  # a complete check did not see it: the host converged or the task is gone
    HOST_REMOVED = "host_removed"


def task_file(task_path: str | None) -> str:
    """`roles/web/tasks/main.yml:12` -> `roles/web/tasks/main.yml`; None -> ''."""
    return _LINE.sub("", task_path or "")


# The item types are msgspec Structs, not dataclasses: built, replaced and hashed in C. The drift review
# builds several per drift item of every report at ingest, where a frozen dataclass's __init__ and
# `dataclasses.replace` were 5-9 us each on the collector's machines (bench/README.md, "Ninth pass").
# Frozen and ordered as the dataclasses were; `replace` is msgspec.structs.replace.
class TaskIdentity(msgspec.Struct, frozen=True, order=True):
    """A task across hosts: what a `task` exception names. Missing parts are ''."""

    role: str  # the agent's role (the playbook)
    play: str
    ansible_role: str
    task_file: str
    task: str


class ItemKey(msgspec.Struct, frozen=True, order=True):
    """The key of a drift item: (host, task identity, loop item, twin number); docs/drift-review.md
    section 1. `nth` tells twins apart: tasks of one identity at different lines (the same name twice in
    one play, file and role), numbered 0, 1, ... in the order the report lists them."""

    host: str
    task: TaskIdentity
    item: str
    nth: int = 0

    @classmethod
    def of(cls, host: str, drift: DriftItem) -> ItemKey:
        identity = TaskIdentity(role=drift.role or "", play=drift.play, ansible_role=drift.ansible_role or "",
                                task_file=task_file(drift.task_path), task=drift.task)
        return cls(host=host, task=identity, item=drift.item or "")


class ReviewItem(msgspec.Struct, frozen=True):
    """One episode of a drift item. `accepted_by` is the id of the exception covering it (derived)."""

    key: ItemKey
    first_seen_at: datetime
    last_seen_at: datetime
    kinds: tuple[tuple[DriftKind, datetime], ...]  # the kind over time: changes only, oldest first
    checks: int = 1
    commits: tuple[str, ...] = ()
    commit_count: int = 0
    module: str = ""
    task_path: str = ""
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    accepted_by: int | None = None
    resolved_at: datetime | None = None
    resolution: Resolution | None = None
    id: int | None = None  # the database's id; None until stored

    @property
    def kind(self) -> DriftKind:
        return self.kinds[-1][0]

    @property
    def state(self) -> ItemState:
        if self.resolved_at is not None:
            return ItemState.RESOLVED
        if self.accepted_by is not None:
            return ItemState.ACCEPTED
        if self.acknowledged_at is not None:
            return ItemState.ACKNOWLEDGED
        return ItemState.OPEN

    def age_s(self, now: datetime) -> float:
        """Seconds from first sighting to resolution, or to `now` while current."""
        return ((self.resolved_at or now) - self.first_seen_at).total_seconds()


# Which exception (by id) covers an item now, if any: drift_exceptions.covering bound to the exceptions,
# the host's groups and the clock by the caller.
Coverage = Callable[[ItemKey], int | None]


def _no_coverage(_key: ItemKey) -> int | None:
    return None


@dataclass(frozen=True)
class Changes:
    """What one report changes. `inserted` are new episodes (some already resolved: corrected drift)."""

    inserted: tuple[ReviewItem, ...] = ()
    updated: tuple[ReviewItem, ...] = ()
    resolved: tuple[ReviewItem, ...] = ()
    new_corrective: tuple[ReviewItem, ...] = ()  # opened, corrective, not covered: a notification each


def is_complete_check(report: Report) -> bool:
    """Whether the report's check ran to the end, so that a task it does not list is not drifting."""
    return report.status in COMPLETE_STATUSES and report.phase_reached is Phase.DONE


def report_keys(report: Report) -> dict[ItemKey, DriftItem]:
    """The report's drift by item key, in the report's order. The same task listed twice at the same
    `task_path` counts once; twins (one identity, different lines) get `nth` 1, 2, ... after the first."""
    seen: dict[ItemKey, DriftItem] = {}
    paths: dict[ItemKey, list[str]] = {}
    for drift in report.drift:
        base = ItemKey.of(report.host, drift)
        lines = paths.setdefault(base, [])
        path = drift.task_path or ""
        if path not in lines:
            lines.append(path)
            seen[replace(base, nth=len(lines) - 1)] = drift
    return seen


def apply_report(current: Sequence[ReviewItem], report: Report, *, last_check_at: datetime | None = None,
                 coverage: Coverage = _no_coverage,
                 keys: dict[ItemKey, DriftItem] | None = None) -> Changes:
    """The changes one report makes to its host's current (unresolved) items.

    `last_check_at` is when the newest complete check already applied to this host started: an older
    report (an outbox flushed late) only counts sightings of current items; it never opens or resolves.
    `keys`: `report_keys(report)`, when the caller has it already.
    """
    at = report.started_at
    commit = report.source.commit
    by_key = {i.key: i for i in current if i.resolved_at is None}
    seen = report_keys(report) if keys is None else keys
    stale = last_check_at is not None and at < last_check_at
    fixed = report.status is Status.CORRECTED and not stale
    inserted: list[ReviewItem] = []
    updated: list[ReviewItem] = []
    resolved: list[ReviewItem] = []
    for key, drift in seen.items():
        old = by_key.get(key)
        if old is None and stale:
            continue
        item = _sighting(old, key, drift, at, commit, coverage)
        if fixed and drift.kind in FIXED_BY_APPLY:
            item = replace(item, resolved_at=report.finished_at, resolution=Resolution.CORRECTED)
            (inserted if old is None else resolved).append(item)
        else:
            (inserted if old is None else updated).append(item)
    if is_complete_check(report) and not stale:
        resolved += [replace(i, resolved_at=report.finished_at, resolution=Resolution.ABSENT)
                     for k, i in by_key.items() if k not in seen]
    new_corrective = tuple(i for i in inserted if i.kind is DriftKind.CORRECTIVE and i.accepted_by is None)
    return Changes(tuple(inserted), tuple(updated), tuple(resolved), new_corrective)


def _sighting(old: ReviewItem | None, key: ItemKey, drift: DriftItem, at: datetime, commit: str | None,
              coverage: Coverage) -> ReviewItem:
    if old is None:
        first = min(drift.first_seen_at or at, at)
        return ReviewItem(key=key, first_seen_at=first, last_seen_at=at, kinds=((drift.kind, at),),
                          commits=(commit,) if commit else (), commit_count=1 if commit else 0,
                          module=drift.module, task_path=drift.task_path or "", accepted_by=coverage(key))
    newer = at >= old.last_seen_at
    kinds = old.kinds if not newer or old.kind is drift.kind else (*old.kinds, (drift.kind, at))[-MAX_KINDS:]
    commits, count = old.commits, old.commit_count
    if commit and commit not in commits:
        commits, count = (*commits, commit)[-MAX_COMMITS:], count + 1
    elif commit and newer:  # most recent last
        commits = (*(c for c in commits if c != commit), commit)
    return replace(old, last_seen_at=max(at, old.last_seen_at), kinds=kinds, checks=old.checks + 1,
                   commits=commits, commit_count=count, module=drift.module if newer else old.module,
                   task_path=(drift.task_path or "") if newer else old.task_path)


def acknowledge(item: ReviewItem, *, by: str, at: datetime) -> ReviewItem:
    """Someone is on it. Raises ValueError for a resolved item (the API answers 409)."""
    if item.resolved_at is not None:
        raise ValueError(f"drift item {item.id} is resolved: nothing to acknowledge")
    return replace(item, acknowledged_at=at, acknowledged_by=by)


def unacknowledge(item: ReviewItem) -> ReviewItem:
    return replace(item, acknowledged_at=None, acknowledged_by=None)


def recheck_coverage(items: Sequence[ReviewItem], coverage: Coverage) -> tuple[ReviewItem, ...]:
    """The current items whose coverage changed (an exception created, revoked or expired), updated.

    An item that loses its exception reopens as `open`: its acknowledgement predates the acceptance.
    """
    out = []
    for item in items:
        covered = coverage(item.key)
        if item.resolved_at is not None or covered == item.accepted_by:
            continue
        if covered is None:
            out.append(replace(item, accepted_by=None, acknowledged_at=None, acknowledged_by=None))
        else:
            out.append(replace(item, accepted_by=covered))
    return tuple(out)
