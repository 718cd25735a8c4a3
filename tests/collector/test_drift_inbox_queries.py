"""The drift inbox's fast queries give exactly the figures of the per-row definition (both engines).

queries.drift_by_task counts stored states in one grouped read and moves the accepted items whose
exception has lapsed (revoked, expired) to `open` with a second small read; the state filters are plain
predicates. The oracle below is the previous single read with `effective_state(now)` per row, kept here
to compare against, over a mixed set: open, acknowledged, accepted under a live / an expired / a revoked
exception, resolved, on several hosts, roles and tasks, judged at several times (before and after the
expiry, on the expiry instant).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, and_, case, delete, false, func, select, update

from agent.collector import compliance_store, db, queries, review_store, store
from agent.collector import drift_exceptions as dx
from agent.collector.compliance import Figure
from agent.collector.compliance_store import Current
from agent.collector.queries import CURRENT_ITEM, TASK_IDENTITY, Page, effective_state
from agent.collector.tables import (
    drift_exceptions,
    drift_task_counts,
    host_commits,
    host_roles,
    hosts,
    review_hosts,
    review_items,
)
from agent.report import DriftKind, Report, Status, to_json
from tests.factory import BASE_TIME, drift_item, make_report
from tests.live_collector import fresh_database

ROLES = ("web", "db")
TASKS = ("install nginx", "template config", "sysctl")
EXPIRES = BASE_TIME + timedelta(days=2)  # the 'expiring' exception: live at BASE_TIME, lapsed after
LAST_EXPIRY = BASE_TIME + timedelta(days=30)  # the 'live' one


def oracle_by_task(engine: Engine, now: datetime | None, **filters: str | None) -> list[dict[str, Any]]:
    """The old definition: one grouped read, each row's state through effective_state(now)."""
    ri = review_items.c
    state_now = effective_state(now)
    where = [CURRENT_ITEM]
    for column, value in ((ri.task, filters.get("task")), (ri.kind, filters.get("kind")),
                          (ri.role, filters.get("role")), (ri.host, filters.get("host")),
                          (state_now, filters.get("state"))):
        if value is not None:
            where.append(column == value)
    kinds = [func.sum(case((ri.kind == k.value, 1), else_=0)).label(k.value) for k in DriftKind]
    states = [func.sum(case((state_now == s, 1), else_=0)).label(s) for s in ("open", "acknowledged", "accepted")]
    query = (select(*TASK_IDENTITY, func.max(ri.module).label("module"),
                    func.count(func.distinct(ri.host)).label("hosts"), func.count().label("items"),
                    func.min(ri.first_seen_at).label("first_seen_at"),
                    func.max(ri.last_seen_at).label("last_seen_at"), *kinds, *states)
             .where(*where).group_by(*TASK_IDENTITY))
    with engine.connect() as conn:
        rows = sorted(conn.execute(query).all(),
                      key=lambda r: (-r.hosts, r.task, r.play, r.role, r.ansible_role, r.task_file))
    out = []
    for r in rows:
        item = queries._row(r, skip=(*(k.value for k in DriftKind), "open", "acknowledged", "accepted"))
        item["kinds"] = {k.value: int(getattr(r, k.value) or 0) for k in DriftKind if getattr(r, k.value)}
        item["states"] = {s: int(getattr(r, s) or 0) for s in ("open", "acknowledged", "accepted")}
        out.append(item)
    return out


def oracle_item_ids(engine: Engine, now: datetime | None, state: str) -> list[int]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(review_items.c.id).where(
            CURRENT_ITEM, effective_state(now) == state)).scalars())


# -- compliance_store._current as it was (rows per host read into Python): the oracle for the counted one

def _old_active_ids(conn: Connection, now: datetime) -> list[int]:
    e = drift_exceptions.c
    return [i for (i,) in conn.execute(select(e.id).where(e.revoked_at.is_(None), e.expires_at > now,
                                                          e.created_at <= now))]


def _old_per_host(conn: Connection, now: datetime, group_by: tuple[Any, ...],
              where: tuple[Any, ...] = ()) -> list[Any]:
    """(*group, host, 1 if one of the host's current items in the group is not accepted now else 0),
    one row per group and host. With the index (role, host, state, accepted_by) of migration 0009 this
    reads the index alone (no table rows), in order: 100,000 items give at most hosts x roles rows."""
    ri = review_items.c
    active = _old_active_ids(conn, now)
    accepted = and_(ri.state == "accepted", ri.accepted_by.in_(active)) if active else false()
    unaccepted = func.max(case((accepted, 0), else_=1))
    query = (select(*group_by, ri.host, unaccepted).where(CURRENT_ITEM, *where)
             .group_by(*group_by, ri.host))
    return list(conn.execute(query))


def _old_figure(checked: int, unknown: int, drifting: int, unaccepted: int) -> Figure:
    drifting, unaccepted = min(drifting, checked), min(unaccepted, checked)  # items of a role not listed
    return Figure(checked, checked - drifting, checked - unaccepted, unknown)


def oracle_current(conn: Connection, now: datetime, *, tasks: bool, role: str | None = None,
             task: str | None = None) -> Current:
    """The figures from three reads: the checked hosts, the hosts' roles, and the current items grouped
    by (role, host) (and (role, task, host) for tasks), counted here."""
    ri = review_items.c
    checked = set(conn.execute(select(review_hosts.c.host)).scalars())
    members = select(host_roles.c.role, host_roles.c.host)
    if role is not None:
        members = members.where(host_roles.c.role == role)
    per_role: dict[str, list[int]] = {}
    for r, host in conn.execute(members):
        per_role.setdefault(r, [0, 0])[host not in checked] += 1
    where = (ri.role == role,) if role is not None else ()
    drifting: dict[str, int] = {}
    unaccepted: dict[str, int] = {}
    fleet_drifting: set[str] = set()
    fleet_unaccepted: set[str] = set()
    for r, host, u in _old_per_host(conn, now, (ri.role,), where):
        if host not in checked:  # never checked completely: unknown, whatever its items
            continue
        drifting[r] = drifting.get(r, 0) + 1
        fleet_drifting.add(host)
        if u:
            unaccepted[r] = unaccepted.get(r, 0) + 1
            fleet_unaccepted.add(host)
    roles = {r: _old_figure(c, unknown, drifting.get(r, 0), unaccepted.get(r, 0))
             for r, (c, unknown) in per_role.items()}
    found: dict[tuple[str, str], Figure] = {}
    if tasks:
        counts: dict[tuple[str, str], list[int]] = {}
        only = (ri.task == task,) if task is not None else ()
        for r, name, host, u in _old_per_host(conn, now, (ri.role, ri.task), (*where, *only)):
            if host in checked:
                count = counts.setdefault((r, name), [0, 0])
                count[0] += 1
                count[1] += u
        for (r, name), (d, u) in counts.items():
            c, unknown = per_role.get(r, [0, 0])
            found[(r, name)] = _old_figure(c, unknown, d, u)
    fleet = Figure(0, 0, 0)
    if role is None:
        total = conn.execute(select(func.count()).select_from(hosts)).scalar_one()
        fleet = _old_figure(len(checked), total - len(checked), len(fleet_drifting), len(fleet_unaccepted))
    return Current(fleet, roles, found)


def _exception(conn: Any, *, expires_at: datetime, revoked: bool = False,
               created_at: datetime = BASE_TIME - timedelta(days=5)) -> int:
    values = {"scope": "item", "scope_fields": json.dumps({}), "owner": "ops", "reason": "test",
              "ticket": "T-1", "created_at": created_at, "created_by": "ops", "expires_at": expires_at}
    if revoked:
        values.update(revoked_at=BASE_TIME - timedelta(hours=1), revoked_by="ops")
    return int(conn.execute(drift_exceptions.insert().values(**values)).inserted_primary_key[0])


@pytest.fixture
def mixed(engine: Engine) -> dict[str, int]:
    """12 hosts over 2 roles (one host in both, one never checked completely), 3 tasks each: every state,
    and accepted items under 5 exceptions (live for long, live until EXPIRES, expired, revoked, made
    after BASE_TIME)."""
    hosts = [f"{ROLES[i % 2]}{i:02d}.example.com" for i in range(12)]
    for i, host in enumerate(hosts):
        report = make_report(host, status=Status.FAILED if i == 11 else Status.IN_SYNC,
                             roles=ROLES if i == 0 else (ROLES[i % 2],),
                             finished_at=BASE_TIME - timedelta(minutes=5))
        store.ingest(engine, report, to_json(report).encode(), received_at=BASE_TIME - timedelta(minutes=5))
    with db.write(engine) as conn:
        exc = {"live": _exception(conn, expires_at=LAST_EXPIRY),
               "expiring": _exception(conn, expires_at=EXPIRES),
               "expired": _exception(conn, expires_at=BASE_TIME - timedelta(days=1)),
               "revoked": _exception(conn, expires_at=BASE_TIME + timedelta(days=30), revoked=True),
               "future": _exception(conn, expires_at=LAST_EXPIRY, created_at=BASE_TIME + timedelta(days=1))}
        # (state, exception) cycled over the items: every host and task gets a mix
        plan = [("open", None), ("accepted", "live"), ("acknowledged", None), ("accepted", "expired"),
                ("resolved", None), ("accepted", "revoked"), ("accepted", "expiring"), ("open", None),
                ("accepted", "live"), ("accepted", "future")]
        rows, n = [], 0
        for i, host in enumerate(hosts):
            role = ROLES[i % 2]
            for t, task in enumerate(TASKS):
                if (i + t) % 5 == 4:  # some hosts do not drift on some tasks
                    continue
                state, which = plan[n % len(plan)]
                n += 1
                seen = BASE_TIME - timedelta(hours=n)
                kind = (DriftKind.CORRECTIVE, DriftKind.RECURRING, DriftKind.INTENTIONAL)[n % 3].value
                rows.append({
                    "key_sha256": hashlib.sha256(f"{host}|{task}".encode()).hexdigest(), "host": host,
                    "role": role, "play": f"{role} servers", "ansible_role": role,
                    "task_file": f"roles/{role}/tasks/main.yml", "task": task, "item": "", "nth": 0,
                    "state": state, "kind": kind, "kinds": json.dumps([[kind, seen.isoformat()]]),
                    "first_seen_at": seen, "last_seen_at": BASE_TIME - timedelta(minutes=n),
                    "checks": 2, "commits": json.dumps(["ab" * 20]), "commit_count": 1,
                    "module": f"ansible.builtin.m{n % 4}", "task_path": f"roles/{role}/tasks/main.yml:{t}",
                    "diff_sha256": hashlib.sha256(f"{task}|{i % 3}".encode()).hexdigest(),
                    "accepted_by": exc[which] if which else None,
                    "resolved_at": BASE_TIME - timedelta(minutes=1) if state == "resolved" else None,
                    "resolution": "absent" if state == "resolved" else None})
        conn.execute(review_items.insert(), rows)
    return exc


TIMES = [None, BASE_TIME, EXPIRES - timedelta(microseconds=1), EXPIRES, EXPIRES + timedelta(days=60)]
FILTERS: list[dict[str, str | None]] = [
    {}, {"state": "open"}, {"state": "acknowledged"}, {"state": "accepted"}, {"state": "resolved"},
    {"role": "web"}, {"task": "sysctl"}, {"host": "db01.example.com"}, {"kind": "recurring"},
    {"role": "db", "state": "open"}, {"task": "template config", "state": "accepted"},
    {"kind": "corrective", "state": "open", "role": "web"},
]


@pytest.mark.parametrize("at", range(len(TIMES)), ids=["no-clock", "now", "before-expiry", "on-expiry",
                                                       "after-expiry"])
def test_drift_by_task_gives_the_per_row_definitions_figures(engine, mixed, at):
    now = TIMES[at]
    for filters in FILTERS:
        expected = oracle_by_task(engine, now, **filters)
        got = queries.drift_by_task(engine, Page(limit=1000), now=now, **filters)
        assert got.items == expected, filters
        assert got.total == len(expected)
    # the mixed set really is mixed: every state shows (until the last exception lapses: then none is
    # accepted)
    whole = oracle_by_task(engine, now)
    totals = {s: sum(t["states"][s] for t in whole) for s in ("open", "acknowledged", "accepted")}
    assert totals["open"] and totals["acknowledged"]
    assert bool(totals["accepted"]) == (now is None or now < LAST_EXPIRY), totals


def test_lapsed_acceptances_count_as_open_and_pages_cut_the_same_rows(engine, mixed):
    later = EXPIRES + timedelta(seconds=1)
    before = {s: oracle_item_ids(engine, BASE_TIME, s) for s in ("open", "accepted")}
    after = {s: oracle_item_ids(engine, later, s) for s in ("open", "accepted")}
    assert len(after["open"]) > len(before["open"]) and len(after["accepted"]) < len(before["accepted"])
    for now, ids in ((BASE_TIME, before), (later, after)):
        for state, expected in ids.items():
            listing = queries.drift_items_now(engine, Page(limit=1000), now=now, state=state)
            assert sorted(i["id"] for i in listing.items) == expected
            assert listing.total == len(expected)
            assert {i["state"] for i in listing.items} == {state}
    full = queries.drift_by_task(engine, Page(limit=1000), now=later)
    for offset in range(len(full.items)):
        one = queries.drift_by_task(engine, Page(limit=1, offset=offset), now=later)
        assert one.items == full.items[offset:offset + 1] and one.total == full.total


@pytest.mark.parametrize("at", range(1, len(TIMES)), ids=["now", "before-expiry", "on-expiry", "after-expiry"])
def test_compliance_figures_counted_by_the_database_match_the_per_host_count(engine, mixed, at):
    now = TIMES[at]
    assert now is not None
    cases: list[dict[str, Any]] = [{"tasks": False}, {"tasks": True}, {"tasks": True, "role": "web"},
                                   {"tasks": True, "role": "db", "task": "sysctl"}, {"tasks": True, "role": "nope"}]
    for kwargs in cases:
        with engine.connect() as conn:
            expected: Current = oracle_current(conn, now, **kwargs)
        got = compliance_store.current(engine, now, **kwargs)
        assert got == expected, kwargs
    whole = compliance_store.current(engine, now, tasks=True)
    # the set covers what matters: an unknown host, hosts out of sync, exceptions that count
    assert whole.fleet.unknown == 1 and whole.fleet.in_sync < whole.fleet.hosts
    assert set(whole.roles) == set(ROLES) and whole.tasks
    assert any(f.in_sync < f.in_sync_with_exceptions for f in whole.tasks.values()) == (now < LAST_EXPIRY)


# -- SQLite: the per-task counts the triggers of migration 0012 keep (drift_task_counts) ----------------
#
# After each kind of write to review_items, the counts table must equal the live aggregate of the current
# items (items, distinct hosts, kinds, stored states per task identity), and drift_by_task (which reads it
# on SQLite, unfiltered or by role/task) must give what the live aggregate gives.

COUNTED = [{}, {"role": "web"}, {"role": "db"}, {"task": "nginx config"}, {"role": "web", "task": "users"},
           {"role": "nope"}]


def live_counts(conn: Connection) -> list[tuple[Any, ...]]:
    """The counts by their definition: the current items grouped by task identity."""
    ri = review_items.c
    counts = [func.count(), func.count(func.distinct(ri.host)),
              *(func.sum(case((ri.kind == k.value, 1), else_=0)) for k in DriftKind),
              *(func.sum(case((ri.state == s, 1), else_=0)) for s in queries.REVIEW_STATES)]
    query = select(*TASK_IDENTITY, *counts).where(CURRENT_ITEM).group_by(*TASK_IDENTITY)
    return sorted(tuple(r) for r in conn.execute(query))


def check_counts(engine: Engine, *, now: datetime | None = BASE_TIME) -> list[tuple[Any, ...]]:
    """Assert the kept counts equal the live ones and drift_by_task's two paths agree; the counts."""
    with engine.connect() as conn:
        kept = sorted(tuple(r) for r in conn.execute(select(drift_task_counts)))
        expected = live_counts(conn)
    assert kept == expected
    for filters in COUNTED:
        live = queries._live_by_task(engine, Page(limit=1000), now=now, **filters)
        every = {"task": None, "kind": None, "role": None, "host": None, "state": None, **filters}  # as the UI
        assert queries.drift_by_task(engine, Page(limit=1000), now=now, **every) == live, filters
        assert queries.drift_by_task(engine, Page(limit=1000), now=now, **filters) == live, filters
        assert live.items == oracle_by_task(engine, now, **filters), filters
    full = queries._live_by_task(engine, Page(limit=1000), now=now)
    for offset, limit in ((0, 1), (1, 2), (2, 100), (len(full.items), 5)):
        got = queries.drift_by_task(engine, Page(limit=limit, offset=offset), now=now)
        assert got.items == full.items[offset:offset + limit] and got.total == full.total
    return kept


@pytest.fixture
def lite(tmp_path) -> Iterator[Engine]:
    """A migrated SQLite database (the counts and triggers exist on SQLite only)."""
    with fresh_database("sqlite", tmp_path, migrated=True) as url:
        engine = db.create(url)
        db.prepare(engine)
        yield engine
        engine.dispose()


def _drift(task: str, kind: DriftKind = DriftKind.CORRECTIVE, role: str = "web", item: str | None = None):
    return dataclasses.replace(drift_item(task, kind=kind, role=role), item=item)


class Fleet:
    """Reports to one collector, each a minute after the one before (single or batched ingest)."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.minute = engine, 0

    def _report(self, host: str, drift: tuple[Any, ...], role: str) -> tuple[Report, bytes, datetime]:
        self.minute += 1
        at = BASE_TIME + timedelta(minutes=self.minute)
        report = make_report(host, status=Status.DRIFTED if drift else Status.IN_SYNC, drift=drift,
                             roles=(role,), finished_at=at)
        return report, to_json(report).encode(), at

    def ingest(self, host: str, *drift: Any, role: str = "web") -> None:
        report, raw, at = self._report(host, drift, role)
        assert store.ingest(self.engine, report, raw, received_at=at)

    def group(self, *reports: tuple[str, tuple[Any, ...], str]) -> None:
        results = store.ingest_group(self.engine, [self._report(h, d, r) for h, d, r in reports])
        assert results == [True] * len(reports)


def _item_id(engine: Engine, host: str, task: str, item: str = "") -> int:
    ri = review_items.c
    with engine.connect() as conn:
        return int(conn.execute(select(ri.id).where(ri.host == host, ri.task == task, ri.item == item,
                                                    CURRENT_ITEM)).scalar_one())


def test_counts_follow_every_kind_of_write(lite):
    actor = review_store.Actor("rita", "cli")
    fleet = Fleet(lite)
    seen = [check_counts(lite)]
    assert seen == [[]]

    def step(write: Any) -> None:
        write()
        seen.append(check_counts(lite))
        assert seen[-1] != seen[-2], "the step changed no count: it tests nothing"

    users = [_drift("users", item=name) for name in ("alice", "bob", "carol")]  # one task, 3 loop items
    step(lambda: fleet.ingest("web01", _drift("nginx config"), _drift("sysctl", DriftKind.RECURRING), *users))
    # hosts != items: one host, three items of "users"
    assert any(row[:1] == ("users",) and row[5:7] == (3, 1) for row in seen[-1])
    step(lambda: fleet.group(("web02", (_drift("nginx config"), *users[:2]), "web"),
                             ("db01", (_drift("sysctl", DriftKind.UNVERIFIABLE, role="db"),), "db"),
                             ("web03", (_drift("nginx config", DriftKind.INTENTIONAL),), "web")))
    # the same drift again: the ingest UPDATEs every column of each item, no count moves
    fleet.ingest("web01", _drift("nginx config"), _drift("sysctl", DriftKind.RECURRING), *users)
    fleet.group(("web02", (_drift("nginx config"), *users[:2]), "web"))
    assert check_counts(lite) == seen[-1]
    step(lambda: fleet.ingest("web01", _drift("nginx config", DriftKind.INTENTIONAL),  # kind changes
                              _drift("sysctl", DriftKind.RECURRING), *users))
    step(lambda: fleet.group(("web03", (_drift("nginx config", DriftKind.RECURRING),), "web")))  # batched
    step(lambda: fleet.ingest("web01", _drift("nginx config", DriftKind.INTENTIONAL),  # a loop item resolves
                              _drift("sysctl", DriftKind.RECURRING), *users[:2]))
    step(lambda: fleet.group(("web02", (), "web")))  # all of web02's resolve (batched)
    step(lambda: fleet.ingest("db01"))  # single
    step(lambda: fleet.group(("web02", (_drift("nginx config"), users[2]), "web")))  # re-opened: new items
    step(lambda: fleet.ingest("db01", _drift("sysctl", role="db")))
    sysctl = _item_id(lite, "web01", "sysctl")
    step(lambda: review_store.acknowledge(lite, sysctl, actor=actor, reason="on it", now=BASE_TIME))
    step(lambda: review_store.unacknowledge_item(lite, sysctl, actor=actor, reason="not me", now=BASE_TIME))
    exc = dx.DriftException(id=0, scope=dx.ExceptionScope.ROLE, owner="ops", reason="vendor", ticket="T-1",
                            created_at=BASE_TIME, expires_at=BASE_TIME + timedelta(days=3), role="web",
                            role_kind=dx.RoleKind.PLAYBOOK)
    exc_id = review_store.create_exception(lite, exc, actor=actor, now=BASE_TIME)
    seen.append(check_counts(lite))
    assert seen[-1] != seen[-2] and any(row[-1] for row in seen[-1])  # accepted items
    for at in (BASE_TIME + timedelta(days=3), BASE_TIME + timedelta(days=4)):  # lapsed: moved to open
        check_counts(lite, now=at)
    step(lambda: review_store.revoke_exception(lite, exc_id, actor=actor, reason="fixed",
                                               now=BASE_TIME + timedelta(hours=1)))
    assert exc_id and not any(row[-1] for row in seen[-1])
    short = dataclasses.replace(exc, created_at=BASE_TIME + timedelta(hours=2),
                                expires_at=BASE_TIME + timedelta(days=1))
    step(lambda: review_store.create_exception(lite, short, actor=actor, now=BASE_TIME + timedelta(hours=2)))
    assert any(row[-1] for row in seen[-1])
    # the maintenance step writes the lapsed acceptances down as open
    step(lambda: review_store.expire_exceptions(lite, now=BASE_TIME + timedelta(days=2)))
    assert not any(row[-1] for row in seen[-1])
    ri = review_items.c

    def item(*key: str) -> Any:
        return ri.id == _item_id(lite, *key)

    raw: list[Callable[[], Any]] = [  # built when run: each finds its item after the step before
        lambda: update(review_items).where(item("web01", "users", "alice")).values(host="web09"),
        lambda: update(review_items).where(item("web01", "users", "bob")).values(host="web02"),
        lambda: update(review_items).where(item("web09", "users", "alice")).values(task="adduser"),
        lambda: update(review_items).where(item("web03", "nginx config")).values(play="other play",
                                                                                kind="unverifiable"),
        lambda: update(review_items).where(item("web02", "users", "carol")).values(state="resolved"),
        lambda: delete(review_items).where(item("db01", "sysctl"))]
    for statement in raw:
        step(lambda statement=statement: _run(lite, statement()))
    with lite.connect() as conn:
        resolved = conn.execute(select(func.count()).where(ri.state == "resolved")).scalar_one()
    assert resolved
    before = check_counts(lite)
    _run(lite, delete(review_items).where(ri.state == "resolved"))  # resolved items count nowhere
    assert check_counts(lite) == before
    step(lambda: _run(lite, delete(review_items)))
    assert seen[-1] == []


def _run(engine: Engine, statement: Any) -> None:
    with db.write(engine) as conn:
        assert conn.execute(statement).rowcount


def test_counts_follow_random_writes(lite):
    """Property-style: random inserts, updates of any counted column (to a new value or the same) and
    deletes of items of a few tasks and hosts, the counts compared after each."""
    rng = random.Random(19)
    ri = review_items.c
    values = {"host": ["h1", "h2", "h3"], "task": ["t1", "t2"], "role": ["web", "db"], "play": ["p"],
              "ansible_role": ["a", "b"], "task_file": ["f"], "kind": [k.value for k in DriftKind],
              "state": ["open", "acknowledged", "accepted", "resolved"]}
    for n in range(150):
        with db.write(lite) as conn:
            ids = list(conn.execute(select(ri.id)).scalars())
            action = rng.choice(["insert", "insert", "update", "update", "update", "delete"]) if ids else "insert"
            if action == "insert":
                row = {c: rng.choice(v) for c, v in values.items()}
                conn.execute(review_items.insert().values(**_base_row(n), **row))
            elif action == "update":
                changed = {c: rng.choice(values[c]) for c in rng.sample(sorted(values), rng.randint(1, 3))}
                conn.execute(update(review_items).where(ri.id == rng.choice(ids)).values(**changed))
            else:
                conn.execute(delete(review_items).where(ri.id == rng.choice(ids)))
        with lite.connect() as conn:
            kept = sorted(tuple(r) for r in conn.execute(select(drift_task_counts)))
            assert kept == live_counts(conn), (n, action)
    check_counts(lite)


def _base_row(n: int) -> dict[str, Any]:
    return {"key_sha256": f"{n:064x}", "item": "", "nth": 0, "kinds": "[]",
            "first_seen_at": BASE_TIME - timedelta(hours=n), "last_seen_at": BASE_TIME + timedelta(minutes=n),
            "checks": 1, "commits": "[]", "commit_count": 1, "module": f"m{n % 3}", "task_path": "x.yml:1"}


def test_migration_backfills_the_counts_from_existing_items(tmp_path):
    with fresh_database("sqlite", tmp_path) as url:
        engine = db.create(url)
        try:
            assert db.migrate(engine, "0011") == "0011"
            host_commits.create(engine)  # today's ingest writes it (0014); it goes before the upgrade
            fleet = Fleet(engine)
            users = [_drift("users", item=name) for name in ("alice", "bob")]
            fleet.ingest("web01", _drift("nginx config"), *users)
            fleet.group(("web02", (_drift("nginx config", DriftKind.RECURRING), users[0]), "web"),
                        ("db01", (_drift("sysctl", role="db"),), "db"))
            fleet.ingest("db01")  # resolved: not counted
            host_commits.drop(engine)
            assert db.migrate(engine) == db.head_revision()
            kept = check_counts(engine)
            assert kept and any(row[:1] == ("users",) and row[5:7] == (3, 2) for row in kept)
            config = db._alembic_config()
            with db.write(engine) as conn:  # the downgrade drops the table and its triggers
                config.attributes["connection"] = conn
                command.downgrade(config, "0011")
            with engine.connect() as conn:
                left = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE name LIKE 'drift_task_counts%'")
                assert left.all() == []
        finally:
            engine.dispose()
