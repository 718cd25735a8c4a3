"""The drift inbox's fast queries give exactly the figures of the per-row definition (both engines).

queries.drift_by_task counts stored states in one grouped read and moves the accepted items whose
exception has lapsed (revoked, expired) to `open` with a second small read; the state filters are plain
predicates. The oracle below is the previous single read with `effective_state(now)` per row, kept here
to compare against, over a mixed set: open, acknowledged, accepted under a live / an expired / a revoked
exception, resolved, on several hosts, roles and tasks, judged at several times (before and after the
expiry, on the expiry instant).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, and_, case, false, func, select

from agent.collector import compliance_store, db, queries, store
from agent.collector.compliance import Figure
from agent.collector.compliance_store import Current
from agent.collector.queries import CURRENT_ITEM, TASK_IDENTITY, Page, effective_state
from agent.collector.tables import drift_exceptions, host_roles, hosts, review_hosts, review_items
from agent.report import DriftKind, Status, to_json
from tests.factory import BASE_TIME, make_report

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
