"""The read side of the collector's storage: the queries behind the API (and the UI that follows).

Every function takes the engine and plain values and returns JSON-ready dicts; times are RFC 3339.
Current drift = the unresolved drift items of the drift review (review_items, kept at ingest:
docs/drift-review.md): open, acknowledged or accepted, never drift a run already corrected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    and_,
    bindparam,
    case,
    false,
    func,
    literal_column,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.engine import Row

from agent.collector import review_store
from agent.collector.errors import BadRequestError, NotFoundError
from agent.collector.store import decompress
from agent.collector.tables import (
    commits,
    drift_exceptions,
    drift_task_counts,
    host_commits,
    host_roles,
    hosts,
    review_items,
    runs,
)
from agent.report import DriftKind, format_time

CONVERGED = ("in_sync", "corrected")
FAILING = ("failed", "error")
# Most severe first: sorting hosts by status ascending puts the ones that need someone at the top.
SEVERITY = ("failed", "error", "drifted", "paused", "corrected", "in_sync")
STATUS_SEVERITY = case({s: i for i, s in enumerate(SEVERITY)}, value=hosts.c.status, else_=len(SEVERITY))
# A host's drift_count is its current drift items (not its last run's, which lists corrected drift too);
# the last run's count is kept as last_run_drift_count.
# A literal, not a bound parameter: SQLite uses the partial indexes on current items (migration 0011) only
# when the query says the index's condition word for word.
CURRENT_ITEM = review_items.c.state != literal_column("'resolved'")
CURRENT_DRIFT_COUNT = (select(func.count()).select_from(review_items)
                       .where(review_items.c.host == hosts.c.host, review_store.IS_CURRENT)
                       .correlate(hosts).scalar_subquery())
HOST_VIEW = [*(c for c in hosts.c if c.name != "drift_count"), CURRENT_DRIFT_COUNT.label("drift_count"),
             hosts.c.drift_count.label("last_run_drift_count")]
HOST_SORTS = {"host": hosts.c.host, "last_seen": hosts.c.last_seen_at, "status": STATUS_SEVERITY,
              "drift": CURRENT_DRIFT_COUNT, "commit": hosts.c.commit}


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
    query = select(*HOST_VIEW).where(*where).order_by(*order).limit(page.limit).offset(page.offset)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        total = conn.execute(select(func.count()).select_from(hosts).where(*where)).scalar_one()
    items = [_host_dict(r, stale_before) for r in rows]
    roles = _roles(engine, [i["host"] for i in items])
    for item in items:
        item["roles"] = roles[item["host"]]
    return Listing(items, total)


def get_host(engine: Engine, host: str, *, stale_before: datetime,
             now: datetime | None = None) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(*HOST_VIEW).where(hosts.c.host == host)).first()
        if row is None:
            raise NotFoundError(f"host {host!r} has never reported")
    item = _host_dict(row, stale_before)
    item["roles"] = _roles(engine, [host])[host]
    item["drift"] = drift_items_now(engine, Page(limit=1000), now=now, host=host).items
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


def effective_state(now: datetime | None) -> Any:
    """The item's state as of `now`: an item accepted under an exception that has since expired or was
    revoked reads as `open` until the maintenance step (review_store.expire_exceptions) writes it down.

    A correlated EXISTS per accepted item: fine for a page of items, too slow to filter or aggregate
    100,000 of them; `state_now` gives the same value with one uncorrelated list."""
    if now is None:
        return review_items.c.state
    holds = (select(drift_exceptions.c.id)
             .where(drift_exceptions.c.id == review_items.c.accepted_by,
                    drift_exceptions.c.revoked_at.is_(None),
                    drift_exceptions.c.expires_at > now).exists())
    return case((and_(review_items.c.state == "accepted", ~holds), "open"), else_=review_items.c.state)


def _lapsed_exceptions(now: datetime) -> Any:
    """Ids of the exceptions that no longer hold at `now`: revoked, or expired (the complement of
    effective_state's `holds`; expires_at is never NULL). review_store.expire_exceptions uses the same."""
    e = drift_exceptions.c
    return select(e.id).where(or_(e.revoked_at.is_not(None), e.expires_at <= now))


def lapsed_acceptance(now: datetime) -> Any:
    """Items stored as accepted whose exception no longer holds at `now`: effective_state reads them as
    `open`. Uncorrelated (the lapsed exceptions are read once, not once per item). The same rows as
    effective_state's NOT EXISTS because accepted_by always names a stored exception (a foreign key;
    exceptions are never deleted)."""
    ri = review_items.c
    return and_(ri.state == "accepted",
                or_(ri.accepted_by.is_(None), ri.accepted_by.in_(_lapsed_exceptions(now))))


def _lapsed_items(now: datetime, where: list[Any], columns: tuple[Any, ...]) -> Any:
    """`columns` of the items meeting `where` and lapsed_acceptance(now), as two reads the index
    (state, accepted_by) of migration 0011 answers directly: no exception, and a lapsed exception."""
    ri = review_items.c
    return union_all(
        select(*columns).where(*where, ri.state == "accepted", ri.accepted_by.is_(None)),
        select(*columns).where(*where, ri.state == "accepted", ri.accepted_by.in_(_lapsed_exceptions(now))))


def state_now(now: datetime | None) -> Any:
    """effective_state(now) without a subquery per row (the same value for every row): for filters and
    aggregates over many items. A CASE, so SQLite does not pick an index on `state` for a filter on it and
    keeps to the index in task order (an index search by state then a sort was the slower plan)."""
    if now is None:
        return review_items.c.state
    return case((lapsed_acceptance(now), "open"), else_=review_items.c.state)


def state_is(state: str, now: datetime | None, dialect: str) -> Any:
    """`effective_state(now) == state` as the planner of `dialect` handles best (the same rows): SQLite
    gets the CASE of `state_now`; PostgreSQL gets plain predicates, whose row counts it can estimate (on
    the CASE it guessed a few hundred rows of 50,000, and chose a sort over the index in task order)."""
    ri = review_items.c
    if dialect == "sqlite" or now is None or state not in ("open", "accepted"):
        return state_now(now) == state
    if state == "open":
        return or_(ri.state == "open", lapsed_acceptance(now))
    return and_(ri.state == "accepted", ri.accepted_by.is_not(None),
                ri.accepted_by.not_in(_lapsed_exceptions(now)))


def _drift_where(task: str | None = None, kind: str | None = None, role: str | None = None,
                 host: str | None = None, state: str | None = None, *,
                 now: datetime | None = None, dialect: str = "sqlite") -> list[Any]:
    where = [CURRENT_ITEM]
    for column, value in ((review_items.c.task, task), (review_items.c.kind, kind),
                          (review_items.c.role, role), (review_items.c.host, host)):
        if value is not None:
            where.append(column == value)
    if host is not None:  # the host's current items only, not its resolved history (review_store.IS_CURRENT)
        where.append(review_store.IS_CURRENT)
    if state is not None:
        where.append(state_is(state, now, dialect))
    return where


TASK_IDENTITY = (review_items.c.task, review_items.c.play, review_items.c.role, review_items.c.ansible_role,
                 review_items.c.task_file)
REVIEW_STATES = ("open", "acknowledged", "accepted")


def drift_by_task(engine: Engine, page: Page, *, now: datetime | None = None,
                  **filters: str | None) -> Listing:
    """Tasks drifting now across the fleet (current drift items only): how many hosts and items, which
    kinds and states (as of `now`: effective_state), first and last seen (most hosts first).

    Two reads, exact: the items grouped by task counting their stored states (from the index of
    migration 0011 alone), then the few accepted items whose exception has lapsed by `now`, counted per
    task and moved from `accepted` to `open`. (Counting effective_state per row cost a subquery per
    accepted item: docs/drift-review.md "Speed".)

    On SQLite, unfiltered or filtered by role and/or task only, the first read is the per-task counts
    table the triggers of migration 0012 keep (`_counted_by_task`) instead: the same figures, read in
    O(tasks)."""
    if engine.dialect.name == "sqlite" and all(
            v is None for k, v in filters.items() if k not in COUNTED_FILTERS):
        return _counted_by_task(engine, page, now=now, role=filters.get("role"), task=filters.get("task"))
    return _live_by_task(engine, page, now=now, **filters)


def _live_by_task(engine: Engine, page: Page, *, now: datetime | None, **filters: str | None) -> Listing:
    """drift_by_task's live aggregate over the current items (every filter, every engine)."""
    ri = review_items.c
    kinds = [func.count().filter(ri.kind == k.value).label(k.value) for k in DriftKind]
    states = [func.count().filter(ri.state == s).label(s) for s in REVIEW_STATES]
    where = _drift_where(now=now, dialect=engine.dialect.name, **filters)
    query = (select(*TASK_IDENTITY, func.max(ri.module).label("module"),
                    func.count(func.distinct(ri.host)).label("hosts"),
                    func.count().label("items"),
                    func.min(ri.first_seen_at).label("first_seen_at"),
                    func.max(ri.last_seen_at).label("last_seen_at"), *kinds, *states)
             .where(*where).group_by(*TASK_IDENTITY))
    with engine.connect() as conn:  # one row per distinct task: few enough to sort in Python
        rows = sorted(conn.execute(query).all(),
                      key=lambda r: (-r.hosts, r.task, r.play, r.role, r.ansible_role, r.task_file))
        lapsed: dict[tuple[Any, ...], int] = {}
        if now is not None and filters.get("state") in (None, "open"):
            # no GROUP BY: the database finds these few rows through the index (state, accepted_by)
            for identity in conn.execute(_lapsed_items(now, where, TASK_IDENTITY)):
                lapsed[tuple(identity)] = lapsed.get(tuple(identity), 0) + 1
    items = []
    skip = (*(k.value for k in DriftKind), *REVIEW_STATES)
    for r in rows[page.offset:page.offset + page.limit]:
        item = _row(r, skip=skip)
        item["kinds"] = {k.value: int(getattr(r, k.value) or 0) for k in DriftKind if getattr(r, k.value)}
        counts = {s: int(getattr(r, s) or 0) for s in REVIEW_STATES}
        moved = lapsed.get(tuple(r[:len(TASK_IDENTITY)]), 0)
        counts["accepted"] -= moved
        counts["open"] += moved
        item["states"] = counts
        items.append(item)
    return Listing(items, len(rows))


COUNTED_FILTERS = ("role", "task")  # the filters the per-task counts can answer
# one task's live figures, built once: 100 statements built per request cost more than their reads
_LIVE_PER_TASK = (select(func.min(review_items.c.first_seen_at).label("first_seen_at"),
                         func.max(review_items.c.last_seen_at).label("last_seen_at"),
                         func.max(review_items.c.module).label("module"))
                  .where(CURRENT_ITEM, *(c == bindparam(f"k_{c.name}") for c in TASK_IDENTITY)))


def _counted_by_task(engine: Engine, page: Page, *, now: datetime | None, role: str | None = None,
                     task: str | None = None) -> Listing:
    """drift_by_task from `drift_task_counts` (SQLite, migration 0012): its rows (one per task identity
    with current items) sorted as the live aggregate's, the page cut, then for each task shown what
    counts cannot keep, read live: first seen (min), last seen (max) and the module (max) of its current
    items, one read per task of the covering index of 0011 (that task's entries only); and the same
    lapsed-acceptance correction as the live read. The same dicts as the live aggregate's."""
    tc = drift_task_counts.c
    where = [c == v for c, v in ((tc.role, role), (tc.task, task)) if v is not None]
    identity = (tc.task, tc.play, tc.role, tc.ansible_role, tc.task_file)
    with engine.connect() as conn:
        rows = sorted(conn.execute(select(drift_task_counts).where(tc["items"] > 0, *where)).all(),
                      key=lambda r: (-r.hosts, r.task, r.play, r.role, r.ansible_role, r.task_file))
        shown = rows[page.offset:page.offset + page.limit]
        live = [conn.execute(_LIVE_PER_TASK, {f"k_{c.name}": getattr(r, c.name) for c in TASK_IDENTITY}).one()
                for r in shown]
        lapsed: dict[tuple[Any, ...], int] = {}
        if now is not None and shown:
            for lapse in conn.execute(_lapsed_items(now, _drift_where(role=role, task=task), TASK_IDENTITY)):
                lapsed[tuple(lapse)] = lapsed.get(tuple(lapse), 0) + 1
    items = []
    for r, seen in zip(shown, live, strict=True):
        key = tuple(getattr(r, c.name) for c in identity)
        item: dict[str, Any] = dict(zip((c.name for c in identity), key, strict=True))
        item.update(module=seen.module, hosts=r.hosts, items=r._mapping["items"],
                    first_seen_at=_json(seen.first_seen_at), last_seen_at=_json(seen.last_seen_at))
        item["kinds"] = {k.value: getattr(r, k.value) for k in DriftKind if getattr(r, k.value)}
        counts = {s: int(getattr(r, s)) for s in REVIEW_STATES}
        moved = lapsed.get(key, 0)
        counts["accepted"] -= moved
        counts["open"] += moved
        item["states"] = counts
        items.append(item)
    return Listing(items, len(rows))


def drift_items_now(engine: Engine, page: Page, *, now: datetime | None = None,
                    **filters: str | None) -> Listing:
    """Every current drift item with its lifecycle (first/last seen, age, checks, commits, state),
    hosts with the same diff next to each other (filter by task: which hosts drift on it)."""
    where = _drift_where(now=now, dialect=engine.dialect.name, **filters)
    query = (select(review_items, effective_state(now).label("state_now"),
                    hosts.c.commit, hosts.c.status,
                    hosts.c.last_run_id.label("run_id"))
             .select_from(review_items.join(hosts, hosts.c.host == review_items.c.host)).where(*where)
             .order_by(review_items.c.task, review_items.c.diff_sha256, review_items.c.host,
                       review_items.c.id)
             .limit(page.limit).offset(page.offset))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        total = conn.execute(select(func.count()).select_from(review_items).where(*where)).scalar_one()
    return Listing([review_store.item_dict(r, now) for r in rows], total)


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
        # hosts are never deleted, so each pair is a host of the fleet; kept when prune deletes the runs
        ever_ran = select(count).select_from(host_commits).where(host_commits.c.commit == sha)
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
    query = select(*HOST_VIEW).where(where).order_by(hosts.c.host).limit(page.limit).offset(page.offset)
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
        kinds_q = select(review_items.c.kind, count).where(CURRENT_ITEM).group_by(review_items.c.kind)
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
