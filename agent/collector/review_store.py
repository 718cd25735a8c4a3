"""The drift review's storage: drift items kept at ingest, exceptions, review actions and their audit log.

`record_report` runs inside `store.ingest`'s transaction, right after the run and its host are written:
it loads the host's current (unresolved) items and the active exceptions, asks the pure
`drift_review.apply_report` what changes, and writes that. Its cost is the host's current items plus the
report's drift, never the run history. The actions (`acknowledge`, `create_exception`, ...) each write
their change and one `review_audit` row in one transaction. Rules: docs/drift-review.md.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import Connection, Engine, and_, bindparam, func, literal_column, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from agent.collector import bulk, db
from agent.collector import drift_exceptions as dx
from agent.collector.drift_review import (
    Changes,
    ItemKey,
    ItemState,
    Resolution,
    ReviewItem,
    TaskIdentity,
    apply_report,
    is_complete_check,
    recheck_coverage,
    report_keys,
    unacknowledge,
)
from agent.collector.drift_review import (
    acknowledge as ack_item,
)
from agent.collector.errors import ConflictError, InvalidActionError, NotFoundError
from agent.collector.tables import (
    UTCDateTime,
    drift_exception_alerts,
    drift_exceptions,
    host_roles,
    review_audit,
    review_hosts,
    review_items,
)
from agent.report import Diff, DriftItem, DriftKind, Report, format_time

# A current item, by its states rather than as "state != 'resolved'": resolved items stay as history, a host
# gathers more of them with every report for as long as it is kept, and where an index starts (host, state)
# or (state, ...) "state IN (...)" seeks to the current ones while "state != ?" reads every resolved one too
# (ix_review_items_host_state; on PostgreSQL a host's read seeks so too, while a batch's many hosts may be
# planned as a bitmap of two indexes, which reads no more than before). Literals: one statement for all.
CURRENT_STATES = tuple(s.value for s in ItemState if s is not ItemState.RESOLVED)
IS_CURRENT = review_items.c.state.in_([literal_column(f"'{s}'") for s in CURRENT_STATES])
# json.dumps(..., ensure_ascii=False) builds a new JSONEncoder per call; this one encoder writes the same
_JSON_UNICODE = json.JSONEncoder(ensure_ascii=False)


def key_sha256(key: ItemKey) -> str:
    t = key.task
    parts = [key.host, t.role, t.play, t.ansible_role, t.task_file, t.task, key.item, key.nth]
    return hashlib.sha256(_JSON_UNICODE.encode(parts).encode("utf-8")).hexdigest()


def diff_sha256(drift: DriftItem) -> str | None:
    """A hash of the item's diffs (path, before, after), so hosts with the same diff group together:
    the SHA-256 (hex) of their JSON as [[path, before, after], ...], or None for an item without diffs.
    Remembered per diffs (DIFF_HASHES): each sighting of an item hashes its diffs again, and an item is
    sighted at every check of its host, with the same diffs on many hosts."""
    if not drift.diffs:
        return None
    return DIFF_HASHES.get(drift.diffs)


class DiffHashes:
    """`get(diffs)`: the diffs' hash, computed once and kept while the diffs kept (their paths and texts)
    stay under `max_chars` characters in all; past that everything is forgotten and kept anew (a fleet's
    current diffs are few, each repeated by many hosts and checks). Diffs longer than `max_chars` are
    hashed every time. Thread-safe. The key is the diffs themselves (equal diffs, equal hash), never a
    digest of them: a collision cannot give one diff another's hash."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._hashes: dict[tuple[Diff, ...], str] = {}
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, diffs: tuple[Diff, ...]) -> str:
        with self._lock:
            known = self._hashes.get(diffs)
        if known is not None:
            return known
        parts = [[d.path, d.before, d.after] for d in diffs]
        digest = hashlib.sha256(_JSON_UNICODE.encode(parts).encode("utf-8")).hexdigest()
        chars = sum(len(d.path) + len(d.before or "") + len(d.after or "") for d in diffs)
        if chars > self.max_chars:  # never kept, and no reason to forget the others
            return digest
        with self._lock:
            if self._chars + chars > self.max_chars:
                self._hashes.clear()
                self._chars = 0
            if diffs not in self._hashes:
                self._hashes[diffs] = digest
                self._chars += chars
        return digest


# at most 8 Mi characters of diffs kept (the agent cuts each diff text at 64 Ki, agent/result_text.py; a
# collector may still be sent longer ones, which are hashed every time when over the whole budget)
DIFF_HASHES = DiffHashes(8 * 1024 * 1024)


def _key_of(row: Any) -> ItemKey:
    identity = TaskIdentity(role=row.role, play=row.play, ansible_role=row.ansible_role,
                            task_file=row.task_file, task=row.task)
    return ItemKey(host=row.host, task=identity, item=row.item, nth=row.nth)


def item_of(row: Any) -> ReviewItem:
    """A `review_items` row as the pure ReviewItem."""
    kinds = tuple((DriftKind(k), datetime.fromisoformat(at)) for k, at in msgspec.json.decode(row.kinds))
    return ReviewItem(
        key=_key_of(row), first_seen_at=row.first_seen_at, last_seen_at=row.last_seen_at, kinds=kinds,
        checks=row.checks, commits=tuple(msgspec.json.decode(row.commits)), commit_count=row.commit_count,
        module=row.module, task_path=row.task_path, acknowledged_at=row.acknowledged_at,
        acknowledged_by=row.acknowledged_by, accepted_by=row.accepted_by, resolved_at=row.resolved_at,
        resolution=Resolution(row.resolution) if row.resolution else None, id=row.id)


def _values(item: ReviewItem) -> dict[str, Any]:
    """The columns an item's change writes (not its key)."""
    return {
        "state": item.state.value, "kind": item.kind.value,
        "kinds": json.dumps([[k.value, at.isoformat()] for k, at in item.kinds]),
        "first_seen_at": item.first_seen_at, "last_seen_at": item.last_seen_at, "checks": item.checks,
        "commits": json.dumps(list(item.commits)), "commit_count": item.commit_count, "module": item.module,
        "task_path": item.task_path, "acknowledged_at": item.acknowledged_at,
        "acknowledged_by": item.acknowledged_by, "accepted_by": item.accepted_by,
        "resolved_at": item.resolved_at, "resolution": item.resolution.value if item.resolution else None,
    }


# The columns of `_values` that are an item's field as it is; the others are derived or encoded.
_PLAIN_COLUMNS = ("first_seen_at", "last_seen_at", "checks", "commit_count", "module", "task_path",
                  "acknowledged_at", "acknowledged_by", "accepted_by", "resolved_at")


def _changed_values(old: ReviewItem, new: ReviewItem) -> dict[str, Any]:
    """The columns of `_values(new)` whose value differs from `_values(old)`'s, and only those: what an
    item's UPDATE sets. A sighting changes last_seen_at and checks and little else, and SQLite rewrites
    only the indexes whose columns the SET names, where setting every column would rewrite all seven of
    review_items' indexes at every check of every drifting host (bench/README.md, "Ninth pass").
    tests/collector/test_review_store.py checks that `{**_values(old), **_changed_values(old, new)} ==
    _values(new)`."""
    values = {c: getattr(new, c) for c in _PLAIN_COLUMNS if getattr(old, c) != getattr(new, c)}
    if old.state is not new.state:
        values["state"] = new.state.value
    if old.kinds != new.kinds:
        values["kinds"] = json.dumps([[k.value, at.isoformat()] for k, at in new.kinds])
        if old.kind is not new.kind:
            values["kind"] = new.kind.value
    if old.commits != new.commits:
        values["commits"] = json.dumps(list(new.commits))
    if old.resolution is not new.resolution:
        values["resolution"] = new.resolution.value if new.resolution else None
    return values


def _insert_row(item: ReviewItem, diff: str | None) -> dict[str, Any]:
    k, t = item.key, item.key.task
    return {"key_sha256": key_sha256(k), "host": k.host, "role": t.role, "play": t.play,
            "ansible_role": t.ansible_role, "task_file": t.task_file, "task": t.task, "item": k.item,
            "nth": k.nth, "diff_sha256": diff, **_values(item)}


# -- exceptions as values -------------------------------------------------------------------------


def exception_of(row: Any) -> dx.DriftException:
    fields = json.loads(row.scope_fields)
    scope = dx.ExceptionScope(row.scope)
    key = task = None
    if scope is dx.ExceptionScope.ITEM:
        h, role, play, arole, tfile, tname, item, nth = fields["key"]
        key = ItemKey(h, TaskIdentity(role, play, arole, tfile, tname), item, nth)
    if scope is dx.ExceptionScope.TASK:
        task = TaskIdentity(*fields["task"])
    return dx.DriftException(
        id=row.id, scope=scope, owner=row.owner, reason=row.reason, ticket=row.ticket,
        created_at=row.created_at, expires_at=row.expires_at, key=key, task=task, item=fields.get("item"),
        role=fields.get("role"), role_kind=dx.RoleKind(fields.get("role_kind", "ansible")),
        hosts=dx.HostSelector(pattern=row.host_pattern, group=row.host_group), revoked_at=row.revoked_at)


def _scope_fields(exc: dx.DriftException) -> str:
    fields: dict[str, Any] = {}
    if exc.key is not None:
        t = exc.key.task
        fields["key"] = [exc.key.host, t.role, t.play, t.ansible_role, t.task_file, t.task, exc.key.item,
                         exc.key.nth]
    if exc.task is not None:
        t = exc.task
        fields["task"] = [t.role, t.play, t.ansible_role, t.task_file, t.task]
        fields["item"] = exc.item
    if exc.role is not None:
        fields["role"], fields["role_kind"] = exc.role, exc.role_kind.value
    return json.dumps(fields, ensure_ascii=False)


def active_exceptions(conn: Connection, now: datetime) -> list[dx.DriftException]:
    """Exceptions not revoked and not expired at `now` (few: people create them one by one)."""
    return [exception_of(r) for r in conn.execute(ACTIVE_EXCEPTIONS, {"now": now})]


ACTIVE_EXCEPTIONS = select(drift_exceptions).where(
    drift_exceptions.c.revoked_at.is_(None),
    drift_exceptions.c.expires_at > bindparam("now", type_=UTCDateTime()))


def _groups(conn: Connection, hosts: Iterable[str]) -> dict[str, set[str]]:
    names = sorted(set(hosts))
    found: dict[str, set[str]] = {h: set() for h in names}
    for start in range(0, len(names), 500):
        chunk = names[start:start + 500]
        query = select(host_roles.c.host, host_roles.c.role).where(host_roles.c.host.in_(chunk))
        for host, role in conn.execute(query):
            found[host].add(role)
    return found


# -- ingest -----------------------------------------------------------------------------------------


def record_report(conn: Connection, report: Report, *, now: datetime) -> Changes:
    """Update the host's drift items for one new report, in the caller's transaction (store.ingest)."""
    rows = conn.execute(select(review_items).where(review_items.c.host == report.host, IS_CURRENT)
                        .order_by(review_items.c.id).with_for_update()).all()
    current = [item_of(r) for r in rows]
    last_check_at = conn.execute(select(review_hosts.c.last_check_at)
                                 .where(review_hosts.c.host == report.host)).scalar_one_or_none()
    exceptions = active_exceptions(conn, now) if report.drift else []
    return _record(conn, report, now, current, {r.id: r.diff_sha256 for r in rows}, last_check_at, exceptions)


def record_reports(conn: Connection, items: Sequence[tuple[Report, datetime]]) -> None:
    """`record_report` for each (report, now), in the caller's transaction (store.ingest_group), with the
    reads batched. A host with several reports here has them recorded in their order, each on what the one
    before left: in rounds, each host's first report in the first round, its second in the second, and so
    on (a host's items, last check and writes are its own; the exceptions are only read), each round
    batched (`_record_round`)."""
    rounds: list[list[tuple[Report, datetime]]] = []
    nth: collections.Counter[str] = collections.Counter()
    for report, now in items:
        k = nth[report.host]
        nth[report.host] += 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append((report, now))
    for single in rounds:
        _record_round(conn, single)


def _record_round(conn: Connection, single: Sequence[tuple[Report, datetime]]) -> None:
    """`record_report` for reports of distinct hosts: the items and last checks of all their hosts in one
    SELECT each (500 hosts a statement), the active exceptions once (at the earliest `now`; `covering`
    checks each report's own `now`), the new items in one executemany, the changed ones in one per set of
    columns."""
    names = sorted(report.host for report, _ in single)
    current: dict[str, list[ReviewItem]] = {h: [] for h in names}
    stored_diffs: dict[int, str | None] = {}
    last_checks: dict[str, datetime] = {}
    for start in range(0, len(names), 500):
        chunk = names[start:start + 500]
        for row in conn.execute(CURRENT_ITEMS_OF, {"hosts": chunk}):
            current[row.host].append(item_of(row))
            stored_diffs[row.id] = row.diff_sha256
        last_checks.update(conn.execute(LAST_CHECKS_OF, {"hosts": chunk}).all())
    drifted = [now for report, now in single if report.drift]
    exceptions = active_exceptions(conn, min(drifted)) if drifted else []
    inserts: list[dict[str, Any]] = []
    checks: list[tuple[str, datetime, bool]] = []
    updates: list[dict[str, Any]] = []
    for report, now in single:
        _record(conn, report, now, current[report.host], stored_diffs, last_checks.get(report.host),
                exceptions, inserts, checks, updates)
    bulk.executemany(conn, ITEMS_INSERT, inserts)
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = collections.defaultdict(list)
    for values in updates:  # one executemany per set of columns (with or without diff_sha256)
        by_columns[tuple(sorted(values))].append(values)
    for rows in by_columns.values():
        bulk.executemany(conn, ITEM_SET, rows)
    bulk.executemany(conn, LAST_CHECK_INSERT,
                     [{"host": host, "last_check_at": at} for host, at, new in checks if new])
    bulk.executemany(conn, LAST_CHECK_SET,
                     [{"key_host": host, "last_check_at": at} for host, at, new in checks if not new])


# record_reports' statements, built once (the same SQL as built per call)
CURRENT_ITEMS_OF = select(review_items).where(review_items.c.host.in_(bindparam("hosts", expanding=True)),
                                              IS_CURRENT) \
    .order_by(review_items.c.id).with_for_update()
LAST_CHECKS_OF = select(review_hosts.c.host, review_hosts.c.last_check_at).where(
    review_hosts.c.host.in_(bindparam("hosts", expanding=True)))
LAST_CHECK_SET = update(review_hosts).where(review_hosts.c.host == bindparam("key_host"))
ITEM_SET = update(review_items).where(review_items.c.id == bindparam("key_id"))
ITEMS_INSERT = review_items.insert()
LAST_CHECK_INSERT = review_hosts.insert()


def _record(conn: Connection, report: Report, now: datetime, current: list[ReviewItem],
            stored_diffs: Mapping[int, str | None], last_check_at: datetime | None,
            exceptions: list[dx.DriftException],
            inserts: list[dict[str, Any]] | None = None,
            checks: list[tuple[str, datetime, bool]] | None = None,
            updates: list[dict[str, Any]] | None = None) -> Changes:
    """The writes of `record_report` from what it read (`stored_diffs`: the current items' diff_sha256 by
    id). When the lists are given, new items are appended to `inserts`, the host's new last check to
    `checks` as (host, time, first check) and the changed items' changed columns (`_changed_values`) to
    `updates` (with their id as key_id, for ITEM_SET) for the caller to write; else they are written
    here."""
    groups = set(report.roles)

    def coverage(key: ItemKey) -> int | None:
        return dx.covering(exceptions, key, groups, now)

    drifts = report_keys(report)
    changes = apply_report(current, report, last_check_at=last_check_at, coverage=coverage, keys=drifts)
    if changes.inserted:
        rows = [_insert_row(i, diff_sha256(drifts[i.key])) for i in changes.inserted]
        if inserts is None:
            conn.execute(review_items.insert(), rows)
        else:
            inserts.extend(rows)
    before = {i.key: i for i in current}
    for item in (*changes.updated, *changes.resolved):
        values = _changed_values(before[item.key], item)
        if item.key in drifts:
            diff = diff_sha256(drifts[item.key])
            if item.id is None or diff != stored_diffs.get(item.id):
                values["diff_sha256"] = diff
        if not values:
            continue
        if updates is not None:
            updates.append({"key_id": item.id, **values})
        else:
            conn.execute(update(review_items).where(review_items.c.id == item.id).values(**values))
    if is_complete_check(report) and (last_check_at is None or report.started_at >= last_check_at):
        if checks is not None:
            checks.append((report.host, report.started_at, last_check_at is None))
        elif last_check_at is None:
            conn.execute(review_hosts.insert().values(host=report.host, last_check_at=report.started_at))
        else:
            conn.execute(update(review_hosts).where(review_hosts.c.host == report.host)
                         .values(last_check_at=report.started_at))
    return changes


# -- actions ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """Who acts: a reviewer token's name or the trusted proxy's user; `kind` says which."""

    name: str
    kind: str  # "token" | "proxy" | "cli"


def _audit(conn: Connection, actor: Actor, action: str, target: str, reason: str | None, at: datetime,
           **details: Any) -> None:
    conn.execute(review_audit.insert().values(at=at, actor=actor.name, actor_kind=actor.kind, action=action,
                                              target=target, reason=reason,
                                              details=json.dumps(details, ensure_ascii=False, default=str)))


def _load_item(conn: Connection, item_id: int, *, lock: bool = False) -> ReviewItem:
    """The item by id; `lock`: FOR UPDATE (the row locks: see `_set`)."""
    query = select(review_items).where(review_items.c.id == item_id)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFoundError(f"drift item {item_id} does not exist")
    return item_of(row)


# The row locks (PostgreSQL; SQLite has one writer at a time and takes none): a review action reads the items
# it changes FOR UPDATE, and so does the ingest (the host's current items), all in id order, so that
# neither writes over the other's change from a row it read before that change committed (an
# acknowledgement racing the ingest that resolves the item would bring it back), and two of them never
# wait for each other in a cycle. Every writer sets only the columns it changed (`_changed_values`).


def _set(conn: Connection, old: ReviewItem, new: ReviewItem) -> None:
    """UPDATE the item's row from `old` to `new`: the changed columns only."""
    values = _changed_values(old, new)
    if values:
        conn.execute(update(review_items).where(review_items.c.id == new.id).values(**values))


def _need_reason(reason: str | None) -> str:
    if reason is None or not reason.strip():
        raise InvalidActionError("reason: required (say why)")
    if len(reason) > 10_000:
        raise InvalidActionError("reason: longer than 10000 characters")
    if "\x00" in reason:  # SQLite would store it, PostgreSQL refuses it: refused on both, named
        raise InvalidActionError("reason: must not contain a NUL character")
    return reason.strip()


def acknowledge(engine: Engine, item_id: int, *, actor: Actor, reason: str | None, now: datetime) -> None:
    """Mark a current item acknowledged (someone is on it). 404 unknown, 409 resolved, 422 no reason."""
    reason = _need_reason(reason)
    with db.write(engine) as conn:
        item = _load_item(conn, item_id, lock=True)
        try:
            changed = ack_item(item, by=actor.name, at=now)
        except ValueError as e:
            raise ConflictError(str(e)) from e
        _set(conn, item, changed)
        _audit(conn, actor, "acknowledge", f"item:{item_id}", reason, now, host=item.key.host,
               task=item.key.task.task)


def unacknowledge_item(engine: Engine, item_id: int, *, actor: Actor, reason: str | None,
                       now: datetime) -> None:
    reason = _need_reason(reason)
    with db.write(engine) as conn:
        item = _load_item(conn, item_id, lock=True)
        if item.resolved_at is not None:
            raise ConflictError(f"drift item {item_id} is resolved")
        _set(conn, item, unacknowledge(item))
        _audit(conn, actor, "unacknowledge", f"item:{item_id}", reason, now, host=item.key.host,
               task=item.key.task.task)


def _recheck(conn: Connection, now: datetime, where: Any = None) -> int:
    """Recompute `accepted` for current items after exceptions changed. Returns how many changed."""
    exceptions = active_exceptions(conn, now)
    query = select(review_items).where(IS_CURRENT)
    if where is not None:
        query = query.where(where)
    items = [item_of(r) for r in conn.execute(query.order_by(review_items.c.id).with_for_update())]
    groups = _groups(conn, (i.key.host for i in items))
    changed = 0
    def coverage(key: ItemKey) -> int | None:
        return dx.covering(exceptions, key, groups.get(key.host, set()), now)

    before = {i.id: i for i in items}
    for new in recheck_coverage(items, coverage):
        _set(conn, before[new.id], new)
        changed += 1
    return changed


def create_exception(engine: Engine, exc: dx.DriftException, *, actor: Actor, now: datetime,
                     max_days: int = dx.MAX_DAYS) -> int:
    """Store an exception (checked by drift_exceptions.problem: 422 naming the field), mark the items
    it covers accepted, and audit it. Returns its id."""
    exc = replace(exc, created_at=now)
    problem = dx.problem(exc, now, max_days)
    if problem is not None:
        raise InvalidActionError(problem)
    with db.write(engine) as conn:
        result = conn.execute(drift_exceptions.insert().values(
            scope=exc.scope.value, scope_fields=_scope_fields(exc), host_pattern=exc.hosts.pattern,
            host_group=exc.hosts.group, owner=exc.owner.strip(), reason=exc.reason.strip(),
            ticket=exc.ticket.strip(), created_at=now, created_by=actor.name, expires_at=exc.expires_at))
        (exc_id,) = result.inserted_primary_key or (0,)
        covered = _recheck(conn, now)
        _audit(conn, actor, "accept", f"exception:{exc_id}", exc.reason.strip(), now, scope=exc.scope.value,
               scope_fields=json.loads(_scope_fields(exc)), host_pattern=exc.hosts.pattern,
               host_group=exc.hosts.group, owner=exc.owner, ticket=exc.ticket,
               expires_at=exc.expires_at.isoformat(), items_covered=covered)
    return int(exc_id)


def revoke_exception(engine: Engine, exc_id: int, *, actor: Actor, reason: str | None, now: datetime) -> None:
    reason = _need_reason(reason)
    with db.write(engine) as conn:
        row = conn.execute(select(drift_exceptions).where(drift_exceptions.c.id == exc_id)).first()
        if row is None:
            raise NotFoundError(f"exception {exc_id} does not exist")
        if row.revoked_at is not None:
            raise ConflictError(f"exception {exc_id} is already revoked")
        conn.execute(update(drift_exceptions).where(drift_exceptions.c.id == exc_id)
                     .values(revoked_at=now, revoked_by=actor.name))
        _recheck(conn, now, review_items.c.accepted_by == exc_id)
        _audit(conn, actor, "revoke", f"exception:{exc_id}", reason, now)


def expire_exceptions(engine: Engine, *, now: datetime) -> list[int]:
    """Reopen the items of exceptions expired by `now` (the clock is the caller's: the notifier's tick,
    or a page load). Returns the ids of the exceptions whose items changed; audits each as `expire`."""
    with db.write(engine) as conn:
        expired = select(drift_exceptions.c.id).where(
            or_(drift_exceptions.c.expires_at <= now, drift_exceptions.c.revoked_at.is_not(None)))
        stale_items = and_(review_items.c.accepted_by.in_(expired))
        ids = sorted({r for (r,) in conn.execute(select(review_items.c.accepted_by).where(
            IS_CURRENT, stale_items).distinct())})
        if not ids:
            return []
        _recheck(conn, now, stale_items)
        for exc_id in ids:
            _audit(conn, Actor("collector", "collector"), "expire", f"exception:{exc_id}", None, now)
    return ids


def load_item(engine: Engine, item_id: int) -> ReviewItem:
    with engine.connect() as conn:
        return _load_item(conn, item_id)


def item_json(engine: Engine, item_id: int, *, now: datetime) -> dict[str, Any]:
    """One drift item as the API shows it (queries.drift_items_now's shape, resolved ones too)."""
    with engine.connect() as conn:
        row = conn.execute(select(review_items).where(review_items.c.id == item_id)).first()
    if row is None:
        raise NotFoundError(f"drift item {item_id} does not exist")
    return item_dict(row, now)


def item_dict(row: Any, now: datetime | None) -> dict[str, Any]:
    """A `review_items` row (with any joined columns) as JSON-ready values, with `age_s` (first seen to
    resolution, or to `now`) and `kinds`/`commits` as lists."""
    item = {k: format_time(v) if isinstance(v, datetime) else v for k, v in row._mapping.items()
            if k not in ("kinds", "commits", "key_sha256", "state_now")}
    if "state_now" in row._mapping and row.state_now != row.state:  # its exception ended: reopened
        item.update(state=row.state_now, accepted_by=None, acknowledged_at=None, acknowledged_by=None)
    item["kinds"] = [{"kind": k, "since": format_time(datetime.fromisoformat(at))}
                     for k, at in json.loads(row.kinds)]
    item["commits"] = json.loads(row.commits)
    end = row.resolved_at or now
    item["age_s"] = round((end - row.first_seen_at).total_seconds()) if end is not None else None
    return item


def exception_row(engine: Engine, exc_id: int) -> Any:
    with engine.connect() as conn:
        row = conn.execute(select(drift_exceptions).where(drift_exceptions.c.id == exc_id)).first()
    if row is None:
        raise NotFoundError(f"exception {exc_id} does not exist")
    return row


def audit_page(engine: Engine, limit: int, offset: int) -> tuple[Sequence[Any], int]:
    """The audit log, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(review_audit).order_by(review_audit.c.id.desc())
                            .limit(limit).offset(offset)).all()
        total = conn.execute(select(func.count()).select_from(review_audit)).scalar_one()
    return rows, total


def audit_after(engine: Engine, after_id: int, limit: int) -> Sequence[Any]:
    """The audit rows after id `after_id`, oldest first (keyset pages for the export)."""
    with engine.connect() as conn:
        return conn.execute(select(review_audit).where(review_audit.c.id > after_id)
                            .order_by(review_audit.c.id).limit(limit)).all()


def exception_rows(engine: Engine) -> Sequence[Any]:
    with engine.connect() as conn:
        return conn.execute(select(drift_exceptions).order_by(drift_exceptions.c.id.desc())).all()


# -- exception alerts (the notifier's tick) -----------------------------------------------------------

ALERT_KINDS = {dx.ExceptionAlert.EXPIRING: "exc_expiring", dx.ExceptionAlert.EXPIRED: "exc_expired"}


@dataclass(frozen=True)
class ExceptionNotice:
    """An exception alert to send: the exception, its alert, a label and the hosts it covers (covered)."""

    exception_id: int
    alert: dx.ExceptionAlert
    kind: str  # the webhook alert kind (webhook_deliveries.alert_kind is short)
    label: str
    hosts: tuple[str, ...]


def exception_notices(engine: Engine, *, now: datetime) -> list[ExceptionNotice]:
    """The exception alerts due now and not sent yet (drift_exceptions.alerts_due over the exceptions
    expiring within 7 days or expired and unrevoked), with the hosts of the items each one covers."""
    soon = now + dx.EXPIRING_WITHIN
    with engine.connect() as conn:
        rows = conn.execute(select(drift_exceptions).where(drift_exceptions.c.expires_at <= soon,
                                                           drift_exceptions.c.revoked_at.is_(None))).all()
        if not rows:
            return []
        ids = [r.id for r in rows]
        sent = {(r.exception_id, dx.ExceptionAlert(r.alert)) for r in conn.execute(
            select(drift_exception_alerts).where(drift_exception_alerts.c.exception_id.in_(ids)))}
        due = dx.alerts_due([exception_of(r) for r in rows], now, sent)
        notices = []
        by_id = {r.id: r for r in rows}
        for exc_id, alert in due:
            covered = and_(review_items.c.accepted_by == exc_id, IS_CURRENT,
                           review_items.c.resolved_at.is_(None))
            hosts = conn.execute(select(review_items.c.host).where(covered).distinct()).scalars()
            row = by_id[exc_id]
            label = f"exception #{exc_id} ({row.scope}, owner {row.owner}, ticket {row.ticket})"
            notices.append(ExceptionNotice(exc_id, alert, ALERT_KINDS[alert], label, tuple(sorted(hosts))))
    return notices


def mark_notified(engine: Engine, notices: Sequence[ExceptionNotice], *, now: datetime) -> None:
    """Record the alerts as sent (the primary key keeps each once, across collector processes)."""
    if not notices:
        return
    with db.write(engine) as conn:
        for n in notices:
            insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)
            conn.execute(insert(drift_exception_alerts).on_conflict_do_nothing(),
                         {"exception_id": n.exception_id, "alert": n.alert.value, "sent_at": now})
