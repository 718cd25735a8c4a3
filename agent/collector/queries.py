"""The read side of the collector's storage: the queries behind the API (and the UI that follows).

Every function takes the engine and plain values and returns JSON-ready dicts; times are RFC 3339.
Current drift = the drift items of each host's latest run (hosts.last_run_id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, case, false, func, select, text
from sqlalchemy.engine import Row

from agent.collector.errors import BadRequestError, NotFoundError
from agent.collector.store import decompress
from agent.collector.tables import commits, drift_items, host_roles, hosts, runs
from agent.report import DriftKind, format_time

CONVERGED = ("in_sync", "corrected")
FAILING = ("failed", "error")
# Most severe first: sorting hosts by status ascending puts the ones that need someone at the top.
SEVERITY = ("failed", "error", "drifted", "paused", "corrected", "in_sync")
STATUS_SEVERITY = case({s: i for i, s in enumerate(SEVERITY)}, value=hosts.c.status, else_=len(SEVERITY))
HOST_SORTS = {"host": hosts.c.host, "last_seen": hosts.c.last_seen_at, "status": STATUS_SEVERITY,
              "drift": hosts.c.drift_count, "commit": hosts.c.commit}


@dataclass(frozen=True)
class Page:
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True)
class HostFilter:
    status: tuple[str, ...] = ()
    role: str | None = None
    commit: str | None = None
    stale: bool | None = None
    search: str | None = None
    sort: str = "host"
    descending: bool = False
    seen_after: datetime | None = None  # last seen at or after this
    seen_before: datetime | None = None  # last seen before this
    contradiction: bool = False  # filters no host can meet (status=stale with stale=false): select none


SEEN_WINDOWS_S = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}


def seen_window(code: str | None, now: datetime) -> tuple[datetime | None, datetime | None]:
    """`seen` filter: "1h" = seen within the last hour; "-1h" = not seen for an hour (also 24h, 7d)."""
    if not code:
        return None, None
    seconds = SEEN_WINDOWS_S.get(code.lstrip("-"))
    if seconds is None:
        raise BadRequestError(f"seen: expected one of {', '.join(SEEN_WINDOWS_S)}, or - before one")
    cutoff = now - timedelta(seconds=seconds)
    return (None, cutoff) if code.startswith("-") else (cutoff, None)


@dataclass(frozen=True)
class Listing:
    items: list[dict[str, Any]]
    total: int


def _json(value: Any) -> Any:
    return format_time(value) if isinstance(value, datetime) else value


def _row(row: Row[Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: _json(v) for k, v in row._mapping.items() if k not in skip}


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _host_dict(row: Row[Any], stale_before: datetime) -> dict[str, Any]:
    item = _row(row)
    item["stale"] = row.due_at < stale_before
    return item


def _roles(engine: Engine, names: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {name: [] for name in names}
    if names:
        query = select(host_roles).where(host_roles.c.host.in_(names)).order_by(host_roles.c.role)
        with engine.connect() as conn:
            for host, role in conn.execute(query):
                found[host].append(role)
    return found


def _host_where(f: HostFilter, stale_before: datetime) -> list[Any]:
    where: list[Any] = [false()] if f.contradiction else []
    if f.status:
        where.append(hosts.c.status.in_(f.status))
    if f.role:
        where.append(hosts.c.host.in_(select(host_roles.c.host).where(host_roles.c.role == f.role)))
    if f.commit:
        where.append(hosts.c.commit.startswith(f.commit, autoescape=True))
    if f.stale is not None:
        where.append(hosts.c.due_at < stale_before if f.stale else hosts.c.due_at >= stale_before)
    if f.search:
        where.append(hosts.c.host.contains(f.search, autoescape=True))
    if f.seen_after is not None:
        where.append(hosts.c.last_seen_at >= f.seen_after)
    if f.seen_before is not None:
        where.append(hosts.c.last_seen_at < f.seen_before)
    return where


def list_hosts(engine: Engine, f: HostFilter, page: Page, *, stale_before: datetime) -> Listing:
    if f.sort not in HOST_SORTS:
        raise BadRequestError(f"sort: must be one of {', '.join(HOST_SORTS)}")
    where = _host_where(f, stale_before)
    column = HOST_SORTS[f.sort]
    order = [column.desc() if f.descending else column.asc(), hosts.c.host.asc()]
    query = select(hosts).where(*where).order_by(*order).limit(page.limit).offset(page.offset)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        total = conn.execute(select(func.count()).select_from(hosts).where(*where)).scalar_one()
    items = [_host_dict(r, stale_before) for r in rows]
    roles = _roles(engine, [i["host"] for i in items])
    for item in items:
        item["roles"] = roles[item["host"]]
    return Listing(items, total)


def get_host(engine: Engine, host: str, *, stale_before: datetime) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(hosts).where(hosts.c.host == host)).first()
        if row is None:
            raise NotFoundError(f"host {host!r} has never reported")
        drift = conn.execute(select(drift_items).where(drift_items.c.run_id == row.last_run_id)
                             .order_by(drift_items.c.id)).all()
    item = _host_dict(row, stale_before)
    item["roles"] = _roles(engine, [host])[host]
    item["drift"] = [_row(d, skip=("id", "host")) for d in drift]
    return item


RUN_COLUMNS = [c for c in runs.c if c.name != "report"]


def host_runs(engine: Engine, host: str, page: Page, *, status: tuple[str, ...] = ()) -> Listing:
    where = [runs.c.host == host] + ([runs.c.status.in_(status)] if status else [])
    query = (select(*RUN_COLUMNS).where(*where).order_by(runs.c.finished_at.desc(), runs.c.run_id)
             .limit(page.limit).offset(page.offset))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        total = conn.execute(select(func.count()).select_from(runs).where(*where)).scalar_one()
        if not total and conn.execute(select(hosts.c.host).where(hosts.c.host == host)).first() is None:
            raise NotFoundError(f"host {host!r} has never reported")
    return Listing([_row(r) for r in rows], total)


def get_run(engine: Engine, run_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.run_id == run_id)).first()
    if row is None:
        raise NotFoundError(f"run {run_id!r} is not stored")
    item = _row(row, skip=("report",))
    item["report"] = json.loads(decompress(row.report))
    return item


# "Current" = in a run that is some host's latest. Written as IN (subquery) so that every engine reads
# the few current rows through the run_id index, with or without table statistics, instead of walking
# the whole drift history.
CURRENT_RUNS = select(hosts.c.last_run_id)


def _current_drift(where: list[Any]) -> Any:
    return and_(drift_items.c.run_id.in_(CURRENT_RUNS), hosts.c.last_run_id == drift_items.c.run_id, *where)


def _drift_where(task: str | None, kind: str | None, role: str | None, host: str | None) -> list[Any]:
    where = []
    for column, value in ((drift_items.c.task, task), (drift_items.c.kind, kind),
                          (drift_items.c.role, role), (drift_items.c.host, host)):
        if value is not None:
            where.append(column == value)
    return where


def drift_by_task(engine: Engine, page: Page, **filters: str | None) -> Listing:
    """Tasks drifting now across the fleet: how many hosts, which kinds, since when (most hosts first)."""
    keys = (drift_items.c.task, drift_items.c.play, drift_items.c.role, drift_items.c.module)
    kinds = [func.sum(case((drift_items.c.kind == k.value, 1), else_=0)).label(k.value) for k in DriftKind]
    hosts_n = func.count(func.distinct(drift_items.c.host)).label("hosts")
    first_seen = func.min(drift_items.c.first_seen_at).label("first_seen_at")
    current = and_(drift_items.c.run_id.in_(CURRENT_RUNS), *_drift_where(**filters))
    query = select(*keys, hosts_n, first_seen, *kinds).where(current).group_by(*keys)
    with engine.connect() as conn:  # one row per distinct task: few enough to count in Python
        rows = sorted(conn.execute(query).all(), key=lambda r: (-r.hosts, r.task, r.play, r.role or ""))
    items = []
    for r in rows[page.offset:page.offset + page.limit]:
        item = _row(r, skip=tuple(k.value for k in DriftKind))
        item["kinds"] = {k.value: int(getattr(r, k.value) or 0) for k in DriftKind if getattr(r, k.value)}
        items.append(item)
    return Listing(items, len(rows))


def drift_items_now(engine: Engine, page: Page, **filters: str | None) -> Listing:
    """Every current drift item, one row per host and task (filter by task: which hosts drift on it)."""
    on = _current_drift(_drift_where(**filters))
    base = select(drift_items, hosts.c.commit, hosts.c.status).select_from(drift_items.join(hosts, on))
    query = base.order_by(drift_items.c.task, drift_items.c.host).limit(page.limit).offset(page.offset)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        total = conn.execute(select(func.count()).select_from(drift_items.join(hosts, on))).scalar_one()
    return Listing([_row(r, skip=("id",)) for r in rows], total)


def _resolve_commit(engine: Engine, sha: str) -> Row[Any]:
    if len(sha) < 4:
        raise BadRequestError("sha: give at least 4 hex digits")
    with engine.connect() as conn:
        match = commits.c.sha.startswith(sha, autoescape=True)
        rows = conn.execute(select(commits).where(match).limit(2)).all()
    if not rows:
        raise NotFoundError(f"no host has reported commit {sha!r}")
    if len(rows) > 1:
        raise BadRequestError(f"sha: {sha!r} is ambiguous, give more digits")
    return rows[0]


def _rollout_summary(engine: Engine, sha: str) -> dict[str, int]:
    count = func.count()
    with engine.connect() as conn:
        status_q = select(hosts.c.status, count).where(hosts.c.commit == sha).group_by(hosts.c.status)
        by_status: dict[str, int] = dict(conn.execute(status_q).all())
        total = conn.execute(select(count).select_from(hosts)).scalar_one()
        ran = select(runs.c.run_id).where(runs.c.commit == sha, runs.c.host == hosts.c.host).exists()
        ever_ran = select(count).select_from(hosts).where(ran)  # index probes, not a scan of its runs
        ever = conn.execute(ever_ran).scalar_one()
    running = sum(by_status.values())
    return {
        "hosts_total": total, "running": running, "not_reached": total - running, "ever_ran": ever,
        "converged": sum(by_status.get(s, 0) for s in CONVERGED),
        "drifted": by_status.get("drifted", 0), "paused": by_status.get("paused", 0),
        "failed": sum(by_status.get(s, 0) for s in FAILING),
    }


def commit_rollout(engine: Engine, sha: str, page: Page, *, stale_before: datetime,
                   reached: bool = True) -> dict[str, Any]:
    """One commit: who runs it (reached=True) or who does not yet (reached=False), with counts."""
    commit = _resolve_commit(engine, sha)
    where = hosts.c.commit == commit.sha if reached else func.coalesce(hosts.c.commit, "") != commit.sha
    query = select(hosts).where(where).order_by(hosts.c.host).limit(page.limit).offset(page.offset)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        total = conn.execute(select(func.count()).select_from(hosts).where(where)).scalar_one()
    return {"commit": _row(commit), "summary": _rollout_summary(engine, commit.sha),
            "hosts": Listing([_host_dict(r, stale_before) for r in rows], total)}


def status_counts(engine: Engine, *, stale_before: datetime) -> dict[str, int]:
    """The whole fleet by status, plus `stale` (a host counts in its status and, if so, in stale)."""
    fleet = fleet_counts(engine, stale_before=stale_before, drift=False)
    return {"total": sum(fleet["hosts"].values()), **fleet["hosts"], "stale": fleet["stale"][""]}


def fleet_counts(engine: Engine, *, stale_before: datetime, drift: bool = True) -> dict[str, dict[str, int]]:
    """Hosts by status, stale hosts and current drift items by kind (for /metrics)."""
    count = func.count()
    with engine.connect() as conn:
        status_q = select(hosts.c.status, count).group_by(hosts.c.status)
        by_status: dict[str, int] = dict(conn.execute(status_q).all())
        stale_q = select(count).select_from(hosts).where(hosts.c.due_at < stale_before)
        stale = conn.execute(stale_q).scalar_one()
        kinds_q = (select(drift_items.c.kind, count).where(drift_items.c.run_id.in_(CURRENT_RUNS))
                   .group_by(drift_items.c.kind))
        by_kind: dict[str, int] = dict(conn.execute(kinds_q).all()) if drift else {}
    return {"hosts": by_status, "stale": {"": stale}, "drift": by_kind}


def stale_cutoff(now: datetime, grace_s: float) -> datetime:
    """Hosts whose due time is before this are stale (not reported within interval + splay + grace)."""
    return now - timedelta(seconds=grace_s)


def recent_runs(engine: Engine, page: Page, *, status: tuple[str, ...] = (),
                commit: str | None = None) -> Listing:
    """Runs across the fleet, newest first (finished time); filter by status and commit (a prefix)."""
    where: list[Any] = [runs.c.status.in_(status)] if status else []
    if commit:
        where.append(runs.c.commit.startswith(commit, autoescape=True))
    query = (select(*RUN_COLUMNS).where(*where).order_by(runs.c.finished_at.desc(), runs.c.run_id)
             .limit(page.limit).offset(page.offset))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        total = conn.execute(select(func.count()).select_from(runs).where(*where)).scalar_one()
    return Listing([_row(r) for r in rows], total)


def list_commits(engine: Engine, page: Page) -> Listing:
    """Commits some host reported, newest first (first seen by the collector, then commit time), each
    with `running` (hosts whose current commit it is) and, of those, `converged` and `failed`."""
    order = (commits.c.first_seen_at.desc(), commits.c.committed_at.desc(), commits.c.sha)
    with engine.connect() as conn:
        rows = conn.execute(select(commits).order_by(*order).limit(page.limit).offset(page.offset)).all()
        total = conn.execute(select(func.count()).select_from(commits)).scalar_one()
        shas = [r.sha for r in rows]
        counts = select(hosts.c.commit, func.count().label("running"),
                        func.sum(case((hosts.c.status.in_(CONVERGED), 1), else_=0)).label("converged"),
                        func.sum(case((hosts.c.status.in_(FAILING), 1), else_=0)).label("failed"))
        by_sha = {r.commit: r for r in conn.execute(counts.where(hosts.c.commit.in_(shas))
                                                    .group_by(hosts.c.commit))} if shas else {}
        hosts_total = conn.execute(select(func.count()).select_from(hosts)).scalar_one()
    items = []
    for row in rows:
        item, found = _row(row), by_sha.get(row.sha)
        for key in ("running", "converged", "failed"):
            item[key] = int(getattr(found, key) or 0) if found is not None else 0
        item["hosts_total"] = hosts_total
        items.append(item)
    return Listing(items, total)
