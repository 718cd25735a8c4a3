"""Compliance figures from the drift items, and their daily series (docs/drift-review.md section 5).

The share of hosts in sync, with and without exceptions, for the fleet, each role (the agent's role: a
playbook, an inventory group), each task (a task name within a role) and each host. Same rule as the pure
`compliance.figure`: a checked host (one with a complete check, `review_hosts`) is in sync in a scope when
it has no current item there, in sync with exceptions when each of those items is accepted by an exception
active *now*; hosts never checked completely are `unknown`, outside the denominator.

- `current(engine, now)`: today's figures, a few `GROUP BY`s over the current items and the hosts
  (O(hosts + current items); never over runs).
- `snapshot(engine, now)`: writes `current` as the UTC day's rows of `compliance_daily` (fleet, every
  role, every task with current drift), replacing that day's rows: idempotent, so any collector process
  may run it (`serve` does every SNAPSHOT_S; the day's row is the last snapshot of that day).
- `series(...)`: a scope's daily rows. A task without a row on a day that has its role's row had no
  current drift that day: all the role's checked hosts were in sync on it.
- `host_series(...)`: a host's series is not stored (a row per host per day would be the biggest table);
  it is read from the host's item episodes (first seen .. resolved), judged at each day's end, with the
  exceptions active then (revoked and expired exceptions are kept, so the past is known).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, delete, false, func, literal, select, union_all

from agent.collector import db
from agent.collector import drift_exceptions as dx
from agent.collector.compliance import Figure
from agent.collector.queries import CURRENT_ITEM
from agent.collector.review_store import IS_CURRENT, exception_of, item_of
from agent.collector.tables import (
    compliance_daily,
    drift_exceptions,
    host_roles,
    hosts,
    review_hosts,
    review_items,
)

SNAPSHOT_S = 900.0  # how often `serve` rewrites today's rows
DEFAULT_DAYS = 90
MAX_DAYS = 366
FLEET = ("fleet", "")


def task_scope(role: str, task: str) -> str:
    """The `scope` of a task in compliance_daily: SHA-256 of [role, task] (task names are long texts)."""
    return hashlib.sha256(json.dumps([role, task], ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Current:
    """Today's figures: the fleet, each role, each (role, task) with current drift."""

    fleet: Figure
    roles: dict[str, Figure] = field(default_factory=dict)
    tasks: dict[tuple[str, str], Figure] = field(default_factory=dict)

    def task(self, role: str, task: str) -> Figure:
        """A task's figure; a task without current drift has all its role's checked hosts in sync."""
        found = self.tasks.get((role, task))
        if found is not None:
            return found
        r = self.roles.get(role, Figure(0, 0, 0))
        return Figure(r.hosts, r.hosts, r.hosts, r.unknown)


def _active_ids(conn: Connection, now: datetime) -> list[int]:
    e = drift_exceptions.c
    return [i for (i,) in conn.execute(select(e.id).where(e.revoked_at.is_(None), e.expires_at > now,
                                                          e.created_at <= now))]


def _per_host(conn: Connection, now: datetime, group_by: tuple[Any, ...],
              where: tuple[Any, ...] = ()) -> list[Any]:
    """(*group, host, 1 if one of the host's current items in the group is not accepted now else 0),
    one row per group and host. With the index (role, host, state, accepted_by) of migration 0009 this
    reads the index alone (no table rows), in order: 100,000 items give at most hosts x roles rows."""
    ri = review_items.c
    active = _active_ids(conn, now)
    accepted = and_(ri.state == "accepted", ri.accepted_by.in_(active)) if active else false()
    unaccepted = func.max(case((accepted, 0), else_=1))
    query = (select(*group_by, ri.host, unaccepted).where(CURRENT_ITEM, *where)
             .group_by(*group_by, ri.host))
    return list(conn.execute(query))


def _figure(checked: int, unknown: int, drifting: int, unaccepted: int) -> Figure:
    drifting, unaccepted = min(drifting, checked), min(unaccepted, checked)  # items of a role not listed
    return Figure(checked, checked - drifting, checked - unaccepted, unknown)


def _current(conn: Connection, now: datetime, *, tasks: bool, role: str | None = None,
             task: str | None = None) -> Current:
    """The figures counted by the database: the checked and unknown members of each role, then the
    current items grouped by (role, host) (and (role, task, host) for tasks), kept for checked hosts and
    counted per role (task). A few rows come back, whatever the fleet's size (reading the 10,000 rows
    per host into Python was most of a page's time)."""
    ri, rh, hr = review_items.c, review_hosts.c, host_roles.c
    e = drift_exceptions.c
    active = select(e.id).where(e.revoked_at.is_(None), e.expires_at > now, e.created_at <= now)
    unaccepted = func.max(case((and_(ri.state == "accepted", ri.accepted_by.in_(active)), 0), else_=1))
    checked = select(rh.host)
    members = (select(hr.role, func.count(rh.host), func.count())
               .select_from(host_roles.outerjoin(review_hosts, rh.host == hr.host)).group_by(hr.role))
    if role is not None:
        members = members.where(hr.role == role)
    per_role = {r: (c, total - c) for r, c, total in conn.execute(members)}
    where = (CURRENT_ITEM, ri.role == role) if role is not None else (CURRENT_ITEM,)
    # one pass over the index of migration 0009 (MATERIALIZED: read once for the roles and the fleet)
    by_host = (select(ri.role, ri.host, unaccepted.label("u")).where(*where)
               .group_by(ri.role, ri.host).having(ri.host.in_(checked))
               .cte("by_host").prefix_with("MATERIALIZED"))
    counted: Any = select(literal("role").label("scope"), by_host.c.role, func.count(),
                          func.sum(by_host.c.u)).group_by(by_host.c.role)
    if role is None:  # the fleet: each checked host with current items once, whatever its roles
        host_u = (select(by_host.c.host, func.max(by_host.c.u).label("u"))
                  .group_by(by_host.c.host).subquery())
        fleet_row = select(literal("fleet"), literal(""), func.count(), func.sum(host_u.c.u))
        counted = union_all(counted, fleet_row)
    drifting: dict[str, tuple[int, int]] = {}
    fleet_counts = (0, 0)
    for scope, r, d, u in conn.execute(counted):
        if scope == "fleet":
            fleet_counts = (d, int(u or 0))
        else:
            drifting[r] = (d, int(u or 0))
    roles = {r: _figure(c, unknown, *drifting.get(r, (0, 0))) for r, (c, unknown) in per_role.items()}
    found: dict[tuple[str, str], Figure] = {}
    if tasks:
        only = (ri.task == task,) if task is not None else ()
        by_task = (select(ri.role, ri.task, ri.host, unaccepted.label("u")).where(*where, *only)
                   .group_by(ri.role, ri.task, ri.host).having(ri.host.in_(checked)).subquery())
        counted = (select(by_task.c.role, by_task.c.task, func.count(), func.sum(by_task.c.u))
                   .group_by(by_task.c.role, by_task.c.task))
        for r, name, d, u in conn.execute(counted):
            c, unknown = per_role.get(r, (0, 0))
            found[(r, name)] = _figure(c, unknown, d, int(u or 0))
    fleet = Figure(0, 0, 0)
    if role is None:
        n_checked = conn.execute(select(func.count()).select_from(review_hosts)).scalar_one()
        total = conn.execute(select(func.count()).select_from(hosts)).scalar_one()
        fleet = _figure(n_checked, total - n_checked, *fleet_counts)
    return Current(fleet, roles, found)


def current(engine: Engine, now: datetime, *, tasks: bool = False, role: str | None = None,
            task: str | None = None) -> Current:
    """Today's figures for the fleet and every role (and every task with current drift when `tasks`);
    with `role`, only that role and its tasks (the fleet is then left empty); with `task`, only it."""
    with engine.connect() as conn:
        return _current(conn, now, tasks=tasks, role=role, task=task)


def host_figure(engine: Engine, host: str, now: datetime) -> Figure:
    """One host today: 1 host, in sync or not (unknown before its first complete check)."""
    with engine.connect() as conn:
        checked = conn.execute(select(review_hosts.c.host).where(review_hosts.c.host == host)).first()
        if checked is None:
            return Figure(0, 0, 0, 1)
        rows = _per_host(conn, now, (), (review_items.c.host == host, IS_CURRENT))
    unaccepted = any(u for _, u in rows)
    return Figure(1, int(not rows), int(not unaccepted))


# -- the daily series -----------------------------------------------------------------------------------


def day_of(now: datetime) -> str:
    return now.astimezone(UTC).date().isoformat()


def snapshot(engine: Engine, now: datetime) -> int:
    """Write today's (UTC) rows of compliance_daily from the current figures, replacing the day's rows
    (idempotent). Returns how many rows were written."""
    day = day_of(now)
    with db.write(engine) as conn:
        figures = _current(conn, now, tasks=True)
        rows = [_row(day, "fleet", "", figures.fleet)]
        rows += [_row(day, "role", r, f) for r, f in figures.roles.items()]
        rows += [_row(day, "task", task_scope(r, t), f) for (r, t), f in figures.tasks.items()]
        conn.execute(delete(compliance_daily).where(compliance_daily.c.day == day))
        conn.execute(compliance_daily.insert(), rows)
    return len(rows)


def _row(day: str, kind: str, scope: str, f: Figure) -> dict[str, Any]:
    return {"day": day, "scope_kind": kind, "scope": scope, "hosts": f.hosts, "in_sync": f.in_sync,
            "in_sync_with_exceptions": f.in_sync_with_exceptions, "unknown": f.unknown}


def _since(now: datetime, days: int) -> str:
    return (now.astimezone(UTC).date() - timedelta(days=days - 1)).isoformat()


def _rows(conn: Connection, kind: str, scope: str, since: str) -> dict[str, Figure]:
    c = compliance_daily.c
    query = select(c.day, c.hosts, c.in_sync, c.in_sync_with_exceptions, c.unknown).where(
        c.scope_kind == kind, c.scope == scope, c.day >= since).order_by(c.day)
    return {r.day: Figure(r.hosts, r.in_sync, r.in_sync_with_exceptions, r.unknown)
            for r in conn.execute(query)}


def series(engine: Engine, kind: str, scope: str, *, now: datetime, days: int = DEFAULT_DAYS,
           role: str | None = None) -> list[tuple[str, Figure]]:
    """The stored daily figures of one scope (`fleet`/"" , `role`/NAME, or `task` with `scope` =
    task_scope(role, task) and `role` given), oldest first, over the last `days` UTC days; days without
    a snapshot are left out."""
    since = _since(now, days)
    with engine.connect() as conn:
        found = _rows(conn, kind, scope, since)
        if kind == "task" and role is not None:  # no row on a day of its role: no current drift then
            for day, r in _rows(conn, "role", role, since).items():
                found.setdefault(day, Figure(r.hosts, r.hosts, r.hosts, r.unknown))
    return sorted(found.items())


def role_series(engine: Engine, *, now: datetime,
                days: int = DEFAULT_DAYS) -> dict[str, list[tuple[str, Figure]]]:
    """Every role's stored daily figures over the last `days` days (one query: roles x days rows)."""
    c = compliance_daily.c
    out: dict[str, list[tuple[str, Figure]]] = {}
    query = select(c.day, c.scope, c.hosts, c.in_sync, c.in_sync_with_exceptions, c.unknown).where(
        c.scope_kind == "role", c.day >= _since(now, days)).order_by(c.scope, c.day)
    with engine.connect() as conn:
        for r in conn.execute(query):
            out.setdefault(r.scope, []).append(
                (r.day, Figure(r.hosts, r.in_sync, r.in_sync_with_exceptions, r.unknown)))
    return out


def host_series(engine: Engine, host: str, *, now: datetime,
                days: int = DEFAULT_DAYS) -> list[tuple[str, Figure]]:
    """A host's daily figure (1 host in sync or not, at each UTC day's end, or now for today) from its
    items' episodes and the exceptions active at that time. Days before the host first reported are left
    out. NotFound is not raised: an unknown host has no days."""
    today = now.astimezone(UTC).date()
    first_day = today - timedelta(days=days - 1)
    start = datetime.combine(first_day, time(), tzinfo=UTC)
    ri = review_items.c
    with engine.connect() as conn:
        first_seen = conn.execute(select(hosts.c.first_seen_at)
                                  .where(hosts.c.host == host)).scalar_one_or_none()
        if first_seen is None:
            return []
        # the current episodes (a seek of (host, state)), then those resolved within the window: this one
        # still reads every resolved episode of the host. Indexing (host, state, resolved_at) would make it a
        # seek, but cost ingest more (a wider index every batch writes: bench/README.md, "Eleventh pass")
        of_host = select(review_items).where(ri.host == host, ri.first_seen_at <= now)
        episodes = [*conn.execute(of_host.where(IS_CURRENT, ri.resolved_at.is_(None))),
                    *conn.execute(of_host.where(ri.state == "resolved", ri.resolved_at > start))]
        exceptions = [exception_of(r) for r in conn.execute(select(drift_exceptions))] if episodes else []
        groups = {r for (r,) in conn.execute(select(host_roles.c.role).where(host_roles.c.host == host))}
    items = [item_of(r) for r in episodes]
    out = []
    day = max(first_day, first_seen.astimezone(UTC).date())
    while day <= today:
        end = datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)
        at = min(end - timedelta(microseconds=1), now)
        there = [i for i in items if i.first_seen_at <= at and (i.resolved_at is None or i.resolved_at > at)]
        accepted = all(dx.covering(exceptions, i.key, groups, at) is not None for i in there)
        out.append((day.isoformat(), Figure(1, int(not there), int(accepted))))
        day += timedelta(days=1)
    return out
