"""The drift item lifecycle (agent/collector/drift_review.py): keys, and table-driven report sequences.

Each case is a sequence of reports and review actions on one host, and the states the items end in;
docs/drift-review.md section 2 is the table these cases follow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial

import pytest

from agent.collector import drift_exceptions as dx
from agent.collector.drift_review import (
    MAX_COMMITS,
    ItemKey,
    ItemState,
    Resolution,
    ReviewItem,
    TaskIdentity,
    acknowledge,
    apply_report,
    is_complete_check,
    recheck_coverage,
    task_file,
    unacknowledge,
)
from agent.report import DriftItem, DriftKind, Phase, Report, Status
from tests.factory import BASE_TIME, COMMIT_A, COMMIT_B, make_report

HOST = "web01.example.com"
C, INT, R, U = DriftKind.CORRECTIVE, DriftKind.INTENTIONAL, DriftKind.RECURRING, DriftKind.UNVERIFIABLE


def drift(task: str, kind: DriftKind = C, *, item: str | None = None, ansible_role: str | None = "nginx",
          task_path: str | None = "roles/nginx/tasks/main.yml:12", role: str = "web") -> DriftItem:
    return DriftItem(play="web servers", task=task, role=role, module="ansible.builtin.template", kind=kind,
                     ansible_role=ansible_role, task_path=task_path, item=item,
                     first_seen_at=None)


def key(task: str, item: str = "") -> ItemKey:
    return ItemKey(HOST, TaskIdentity("web", "web servers", "nginx", "roles/nginx/tasks/main.yml", task), item)


# -- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("roles/nginx/tasks/main.yml:12", "roles/nginx/tasks/main.yml"),
    ("playbooks/web.yml:3", "playbooks/web.yml"),
    ("/opt/roles/x/tasks/main.yml", "/opt/roles/x/tasks/main.yml"),  # no line: kept as is
    ("weird:name.yml:7", "weird:name.yml"),  # only the trailing :line goes
    (None, ""),
])
def test_task_file_drops_only_the_line(path: str | None, expected: str) -> None:
    assert task_file(path) == expected


def test_the_key_survives_a_moved_line_but_tells_items_roles_and_files_apart() -> None:
    base = ItemKey.of(HOST, drift("nginx config"))
    assert ItemKey.of(HOST, drift("nginx config", task_path="roles/nginx/tasks/main.yml:40")) == base
    assert ItemKey.of(HOST, drift("nginx config", kind=R)) == base  # the kind is history, not identity
    different = [drift("nginx config", item="alice"), drift("nginx config", ansible_role="apache"),
                 drift("nginx config", task_path="roles/nginx/tasks/install.yml:12"),
                 drift("nginx config", role="db"), drift("nginx conf")]
    keys = {ItemKey.of(HOST, d) for d in different}
    assert len(keys) == len(different) and base not in keys
    assert ItemKey.of("web02", drift("nginx config")) != base


def test_an_older_agents_report_gives_empty_parts() -> None:
    old = DriftItem(play="p", task="t", role=None, module="m", kind=C)
    assert ItemKey.of(HOST, old) == ItemKey(HOST, TaskIdentity("", "p", "", "", "t"), "")


# -- the lifecycle, table-driven -------------------------------------------------------------------


@dataclass(frozen=True)
class See:
    """A report at minute `at`: its status and the (task, kind) it lists."""

    at: int
    status: Status
    tasks: tuple[tuple[str, DriftKind], ...] = ()
    phase: Phase = Phase.DONE


@dataclass(frozen=True)
class Ack:
    task: str


@dataclass(frozen=True)
class Unack:
    task: str


@dataclass(frozen=True)
class Accept:
    """An exception of scope item on `task`, from minute `at` for `minutes`."""

    task: str
    at: int
    minutes: int


@dataclass(frozen=True)
class Tick:
    """The clock moves to minute `at`: exceptions are rechecked (the notifier's tick)."""

    at: int


@dataclass(frozen=True)
class Revoke:
    """Exception number `exception` (1, 2, ... in the order of the Accept steps) is revoked at minute `at`."""

    exception: int
    at: int


Step = See | Ack | Unack | Accept | Tick | Revoke


def minute(m: int) -> datetime:
    return BASE_TIME + timedelta(minutes=m)


def report(step: See) -> Report:
    return make_report(HOST, status=step.status, finished_at=minute(step.at) + timedelta(seconds=42),
                       drift=tuple(drift(t, k) for t, k in step.tasks), phase_reached=step.phase)


@dataclass
class Host:
    """What the store would hold for one host: current items, resolved history, exceptions, last check."""

    current: dict[ItemKey, ReviewItem]
    history: list[ReviewItem]
    exceptions: list[dx.DriftException]
    last_check_at: datetime | None = None
    now: datetime = BASE_TIME

    def coverage(self, k: ItemKey) -> int | None:
        return dx.covering(self.exceptions, k, {"web"}, self.now)

    def take(self, items: tuple[ReviewItem, ...]) -> None:
        for i in items:
            if i.resolved_at is None:
                self.current[i.key] = i
            else:
                self.current.pop(i.key, None)
                self.history.append(i)


def play(steps: list[Step]) -> Host:
    host = Host({}, [], [])
    for step in steps:
        if isinstance(step, See):
            r = report(step)
            host.now = r.started_at
            changes = apply_report(list(host.current.values()), r, last_check_at=host.last_check_at,
                                   coverage=host.coverage)
            host.take(changes.inserted + changes.updated + changes.resolved)
            if is_complete_check(r):
                host.last_check_at = max(r.started_at, host.last_check_at or r.started_at)
        elif isinstance(step, Ack):
            host.take((acknowledge(host.current[key(step.task)], by="alice", at=host.now),))
        elif isinstance(step, Unack):
            host.take((unacknowledge(host.current[key(step.task)]),))
        elif isinstance(step, Accept):
            host.exceptions.append(dx.DriftException(
                id=len(host.exceptions) + 1, scope=dx.ExceptionScope.ITEM, owner="bob", reason="vendor hotfix",
                ticket="OPS-1", created_at=minute(step.at), expires_at=minute(step.at + step.minutes),
                key=key(step.task)))
            host.now = minute(step.at)
            host.take(recheck_coverage(list(host.current.values()), host.coverage))
        elif isinstance(step, Revoke):
            host.now = minute(step.at)
            host.exceptions = [dataclasses.replace(e, revoked_at=host.now) if e.id == step.exception else e
                               for e in host.exceptions]
            host.take(recheck_coverage(list(host.current.values()), host.coverage))
        else:
            host.now = minute(step.at)
            host.take(recheck_coverage(list(host.current.values()), host.coverage))
    return host


OPEN, A, K = ItemState.OPEN, ItemState.ACCEPTED, ItemState.ACKNOWLEDGED
CASES: dict[str, tuple[list[Step], dict[str, ItemState], list[tuple[str, Resolution]]]] = {
    "drift opens an item": ([See(0, Status.DRIFTED, (("a", C),))], {"a": OPEN}, []),
    "seen again stays one item": (
        [See(0, Status.DRIFTED, (("a", C),)), See(30, Status.DRIFTED, (("a", C),))], {"a": OPEN}, []),
    "a clean complete check resolves it": (
        [See(0, Status.DRIFTED, (("a", C),)), See(30, Status.IN_SYNC)], {}, [("a", Resolution.ABSENT)]),
    "a task gone from a drifted check resolves only that task": (
        [See(0, Status.DRIFTED, (("a", C), ("b", C))), See(30, Status.DRIFTED, (("b", C),))],
        {"b": OPEN}, [("a", Resolution.ABSENT)]),
    "corrected drift is never current": (
        [See(0, Status.CORRECTED, (("a", C),))], {}, [("a", Resolution.CORRECTED)]),
    "corrected resolves an open item it fixed": (
        [See(0, Status.DRIFTED, (("a", C),)), See(30, Status.CORRECTED, (("a", C),))],
        {}, [("a", Resolution.CORRECTED)]),
    "corrected keeps what the apply could not fix": (
        [See(0, Status.CORRECTED, (("a", INT), ("r", R), ("u", U)))], {"r": OPEN, "u": OPEN},
        [("a", Resolution.CORRECTED)]),
    "a failed run resolves nothing": (
        [See(0, Status.DRIFTED, (("a", C), ("b", C))), See(30, Status.FAILED, (("b", C),), Phase.APPLY)],
        {"a": OPEN, "b": OPEN}, []),
    "an error run with nothing resolves nothing": (
        [See(0, Status.DRIFTED, (("a", C),)), See(30, Status.ERROR, (), Phase.DONE)], {"a": OPEN}, []),
    "an unfinished paused run resolves nothing": (
        [See(0, Status.DRIFTED, (("a", C),)), See(30, Status.PAUSED, (), Phase.PLAN)], {"a": OPEN}, []),
    "a paused complete check does resolve": (
        [See(0, Status.DRIFTED, (("a", C), ("b", C))), See(30, Status.PAUSED, (("b", C),))],
        {"b": OPEN}, [("a", Resolution.ABSENT)]),
    "a failed run opens what it saw": ([See(0, Status.FAILED, (("a", C),), Phase.APPLY)], {"a": OPEN}, []),
    "acknowledged": ([See(0, Status.DRIFTED, (("a", C),)), Ack("a")], {"a": K}, []),
    "acknowledged survives sightings": (
        [See(0, Status.DRIFTED, (("a", C),)), Ack("a"), See(30, Status.DRIFTED, (("a", C),))], {"a": K}, []),
    "unacknowledged": ([See(0, Status.DRIFTED, (("a", C),)), Ack("a"), Unack("a")], {"a": OPEN}, []),
    "a recurrence is a new, unacknowledged episode": (
        [See(0, Status.DRIFTED, (("a", C),)), Ack("a"), See(30, Status.IN_SYNC),
         See(60, Status.DRIFTED, (("a", C),))], {"a": OPEN}, [("a", Resolution.ABSENT)]),
    "accepted": ([See(0, Status.DRIFTED, (("a", C),)), Accept("a", 1, 600)], {"a": A}, []),
    "accepted over an acknowledgement": (
        [See(0, Status.DRIFTED, (("a", C),)), Ack("a"), Accept("a", 1, 600)], {"a": A}, []),
    "an exception expired reopens as open, not acknowledged": (
        [See(0, Status.DRIFTED, (("a", C),)), Ack("a"), Accept("a", 1, 60), Tick(61)], {"a": OPEN}, []),
    "a revoked exception reopens as open, not acknowledged": (
        [See(0, Status.DRIFTED, (("a", C),)), Ack("a"), Accept("a", 1, 600), Revoke(1, 2)], {"a": OPEN}, []),
    "revoking one of two exceptions leaves it accepted by the other": (
        [See(0, Status.DRIFTED, (("a", C),)), Accept("a", 1, 600), Accept("a", 2, 60), Revoke(1, 3)],
        {"a": A}, []),
    "revoked, then the other exception expires: open": (
        [See(0, Status.DRIFTED, (("a", C),)), Accept("a", 1, 600), Accept("a", 2, 60), Revoke(1, 3), Tick(62)],
        {"a": OPEN}, []),
    "a revoked exception does not cover a new episode": (
        [Accept("a", 0, 600), Revoke(1, 1), See(2, Status.DRIFTED, (("a", C),))], {"a": OPEN}, []),
    "an exception covers a new episode at once": (
        [Accept("a", 0, 600), See(1, Status.DRIFTED, (("a", C),))], {"a": A}, []),
    "an exception does not keep drift current": (
        [See(0, Status.DRIFTED, (("a", C),)), Accept("a", 1, 600), See(30, Status.IN_SYNC)],
        {}, [("a", Resolution.ABSENT)]),
    "a late report from the outbox neither opens nor resolves": (
        [See(30, Status.DRIFTED, (("a", C),)), See(0, Status.DRIFTED, (("b", C),)), See(10, Status.IN_SYNC)],
        {"a": OPEN}, []),
    "a late corrected report does not resolve": (
        [See(30, Status.DRIFTED, (("a", C),)), See(0, Status.CORRECTED, (("a", C),))], {"a": OPEN}, []),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_lifecycle(case: str) -> None:
    steps, current, resolved = CASES[case]
    host = play(steps)
    assert {k.task.task: i.state for k, i in host.current.items()} == current
    assert [(i.key.task.task, i.resolution) for i in host.history] == resolved
    assert all(i.state is ItemState.RESOLVED for i in host.history)


def test_an_item_records_first_and_last_seen_checks_commits_and_kinds() -> None:
    first = make_report(HOST, status=Status.DRIFTED, finished_at=minute(0), commit=COMMIT_A,
                        drift=(replace(drift("a", INT), first_seen_at=minute(-90)),))
    (item,) = apply_report([], first).inserted
    assert item.first_seen_at == minute(-90)  # the agent saw it before the collector did
    later = make_report(HOST, status=Status.DRIFTED, finished_at=minute(30), commit=COMMIT_B,
                        drift=(drift("a", R),))
    (item,) = apply_report([item], later, last_check_at=first.started_at).updated
    assert (item.last_seen_at, item.checks) == (later.started_at, 2)
    assert (item.commits, item.commit_count) == ((COMMIT_A, COMMIT_B), 2)
    assert item.kinds == ((INT, first.started_at), (R, later.started_at)) and item.kind is R
    assert item.age_s(minute(60)) == (minute(60) - minute(-90)).total_seconds()


def test_commits_are_capped_most_recent_last_and_counted() -> None:
    item = ReviewItem(key("a"), minute(0), minute(0), ((C, minute(0)),))
    for n in range(MAX_COMMITS + 5):
        r = make_report(HOST, status=Status.DRIFTED, finished_at=minute(n + 1), commit=f"{n:040x}",
                        drift=(drift("a"),))
        (item,) = apply_report([item], r).updated
    assert item.commit_count == MAX_COMMITS + 5 and len(item.commits) == MAX_COMMITS
    assert item.commits[-1] == f"{MAX_COMMITS + 4:040x}"
    again = make_report(HOST, status=Status.DRIFTED, finished_at=minute(99), commit=item.commits[0],
                        drift=(drift("a"),))
    (item,) = apply_report([item], again).updated
    assert item.commit_count == MAX_COMMITS + 5 and item.commits[-1] == again.source.commit


def test_a_task_listed_twice_in_one_report_counts_once() -> None:
    r = make_report(HOST, status=Status.DRIFTED, drift=(drift("a"), drift("a", task_path="x.yml:1",
                                                                            ansible_role="nginx")))
    changes = apply_report([], r)
    assert len(changes.inserted) == 2  # different files: two items
    same = make_report(HOST, status=Status.DRIFTED, drift=(drift("a"), drift("a")))
    (item,) = apply_report([], same).inserted
    assert item.checks == 1


def test_new_corrective_drift_is_announced_unless_accepted() -> None:
    r = make_report(HOST, status=Status.DRIFTED, drift=(drift("a", C), drift("b", INT), drift("c", C)))
    covered = partial(lambda accepted, k: 7 if k.task.task == accepted else None, "c")
    changes = apply_report([], r, coverage=covered)
    assert [i.key.task.task for i in changes.new_corrective] == ["a"]
    again = apply_report(list(changes.inserted), replace(r, run_id="again"))
    assert again.new_corrective == ()  # seen again: not new


def test_corrected_drift_is_announced_too() -> None:
    changes = apply_report([], make_report(HOST, status=Status.CORRECTED, drift=(drift("a", C),)))
    assert [i.resolution for i in changes.new_corrective] == [Resolution.CORRECTED]


def test_a_resolved_item_cannot_be_acknowledged() -> None:
    item = ReviewItem(key("a"), minute(0), minute(0), ((C, minute(0)),), id=12, resolved_at=minute(5),
                      resolution=Resolution.ABSENT)
    with pytest.raises(ValueError, match="drift item 12 is resolved"):
        acknowledge(item, by="alice", at=minute(6))


def test_twins_at_different_lines_stay_two_items_and_keep_their_number() -> None:
    """The same name twice in one play, file and role (twins): two items, numbered in report order;
    an edit that moves both lines keeps both items (the line is not in the key)."""
    twins = (drift("a", task_path="roles/nginx/tasks/main.yml:12"),
             drift("a", task_path="roles/nginx/tasks/main.yml:30"))
    first = apply_report([], make_report(HOST, status=Status.DRIFTED, drift=twins)).inserted
    assert sorted(i.key.nth for i in first) == [0, 1]
    moved = tuple(replace(d, task_path=d.task_path.replace(":12", ":14").replace(":30", ":32"))
                  for d in twins if d.task_path)
    again = apply_report(list(first), make_report(HOST, status=Status.DRIFTED, drift=moved,
                                                  finished_at=BASE_TIME + timedelta(minutes=30)))
    assert again.inserted == () and again.resolved == () and len(again.updated) == 2
    one_fixed = apply_report(list(first), make_report(HOST, status=Status.DRIFTED, drift=twins[:1],
                                                      finished_at=BASE_TIME + timedelta(minutes=30)))
    assert [i.key.nth for i in one_fixed.resolved] == [1]
