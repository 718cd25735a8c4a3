"""The write side of the collector's storage: ingest one report, prune old runs.

`ingest` stores a report in one transaction and returns only after the commit, so the API can answer
201 knowing the report is durable. The same report again changes nothing (idempotent re-sends); a
different report under a run_id already stored is a conflict (409), and the first one stays. Times ahead
of the collector's clock are stored as the receive time (`report_times`).
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, bindparam, case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.dml import Insert

from agent.collector import bulk, db, review_store, rollout_ingest
from agent.collector.errors import CollectorError, ConflictError, InvalidReportError, UnauthorizedError
from agent.collector.hostnames import host_name_problem
from agent.collector.report_times import check_run_times, clamp
from agent.collector.tables import UTCDateTime, commits, drift_items, host_commits, host_roles, hosts, runs
from agent.report import Report, Status

PRUNE_BATCH = 500
MAX_INT = 2**31 - 1

# Statements built once: the SET clause of the updates comes from the parameters given at execution.
RUN_STORED = select(runs.c.host, runs.c.report).where(runs.c.run_id == bindparam("key_run_id"))
HOST_SEEN = update(hosts).where(hosts.c.host == bindparam("key_host"))
HOST_STATE_IF_NEWER = update(hosts).where(
    hosts.c.host == bindparam("key_host"),
    hosts.c.last_finished_at <= bindparam("key_finished_at", type_=UTCDateTime()))
ROLES_DELETE = delete(host_roles).where(host_roles.c.host == bindparam("key_host"))


@dataclass(frozen=True)
class Expectations:
    """How often a host is expected to report when its report does not say (interval_s, splay_s)."""

    interval_s: int = 1800
    splay_s: int = 300


def compress(raw: bytes) -> bytes:
    """A report body as stored (zlib). Level 3, not zlib's default 6: on the bodies bench/ingest_wrk.py
    sends, 30 us a report instead of 54 for blobs 8% larger (bench/README.md, "Eighth pass"); every level
    decompresses the same way, so rows written before read as they did."""
    return zlib.compress(raw, 3)


def decompress(blob: bytes) -> bytes:
    return zlib.decompress(blob)


def ingest(engine: Engine, report: Report, raw: bytes, *, received_at: datetime,
           expect: Expectations = Expectations()) -> bool:
    """Store `report` (its JSON body `raw`, kept compressed). True: stored now; False: this same report
    was already stored. ConflictError (409) when its run_id is stored with a different report."""
    check_storable(report)
    report = clamp(report, received_at)
    try:
        with db.write(engine) as conn:
            if _already_stored(conn, report, raw):
                return False
            conn.execute(runs.insert(), _run_row(report, raw, received_at))
            _insert_drift(conn, report)
            _upsert_commit(conn, report, received_at)
            _upsert_host(conn, report, received_at, expect)
            _record_outcomes(conn, report, received_at)
        return True
    except IntegrityError:
        with engine.connect() as conn:  # two senders raced with the same run_id: the other one won
            if _already_stored(conn, report, raw):
                return False
        raise


def _record_outcomes(conn: Connection, report: Report, received_at: datetime) -> None:
    """What every way of storing a run also records, after the run's and its host's rows: its drift items
    (docs/drift-review.md) and its host's rollout outcome (docs/rollout.md)."""
    review_store.record_report(conn, report, now=received_at)
    rollout_ingest.record_report(conn, report)


def ingest_batch(engine: Engine, items: Sequence[tuple[Report, bytes, datetime]], *,
                 expect: Expectations = Expectations()) -> list[bool | Exception]:
    """Store several reports in ONE transaction (one commit, one fsync): a group commit.

    `items` are (report, raw JSON body, received_at). The answer has one entry per item, in order: what
    `ingest` would have returned for it (True stored, False the same report already stored, also when an
    earlier item of the batch stored it), or the exception it would have raised (ConflictError, or a
    database error of that report alone). Each report runs in its own SAVEPOINT, so one refused report
    leaves the others of the batch stored. An error of the transaction itself (the commit, a lost
    connection) is raised: then none of the batch is stored. A report that raced another process for
    its run_id is settled after the commit by `ingest` alone."""
    results: list[bool | Exception] = []
    raced: list[int] = []
    with db.write(engine) as conn:
        for i, (report, raw, received_at) in enumerate(items):
            try:
                check_storable(report)
                report = clamp(report, received_at)
                with conn.begin_nested():
                    if _already_stored(conn, report, raw):
                        results.append(False)
                        continue
                    conn.execute(runs.insert(), _run_row(report, raw, received_at))
                    _insert_drift(conn, report)
                    _upsert_commit(conn, report, received_at)
                    _upsert_host(conn, report, received_at, expect)
                    _record_outcomes(conn, report, received_at)
                results.append(True)
            except IntegrityError as e:
                results.append(e)
                raced.append(i)
            except (CollectorError, DBAPIError) as e:
                results.append(e)
    for i in raced:
        report, raw, received_at = items[i]
        try:
            results[i] = ingest(engine, report, raw, received_at=received_at, expect=expect)
        except (CollectorError, DBAPIError) as e:
            results[i] = e
    return results


def _stored_texts(report: Report) -> list[tuple[str, str | None, int]]:
    source, pause = report.source, report.pause
    texts = [("run_id", report.run_id, 64), ("host", report.host, 255),
             ("agent_version", report.agent_version, 64), ("source.commit", source.commit, 64),
             ("source.previous_commit", source.previous_commit, 64), ("source.ref", source.ref, 255),
             ("source.author", source.author, 10_000), ("source.subject", source.subject, 10_000),
             ("source.signature.signer", source.signature.signer, 10_000),
             ("pause.reason", pause.reason if pause else None, 10_000)]
    texts += [(f"roles[{i}]", role, 255) for i, role in enumerate(report.roles)]
    for i, item in enumerate(report.drift):
        texts += [(f"drift[{i}].role", item.role, 255), (f"drift[{i}].module", item.module, 255),
                  (f"drift[{i}].task", item.task, 1000), (f"drift[{i}].play", item.play, 10_000)]
    return texts


def check_storable(report: Report) -> None:
    """Refuse (422, naming the field) values that cannot go into their columns, rather than failing in
    the database, which an agent would take for a temporary error and retry forever; and run times from
    a clock that was never set (`report_times`)."""
    check_run_times(report)
    for field, value, limit in _stored_texts(report):
        if value is None:
            continue
        if len(value) > limit:
            raise InvalidReportError(f"{field}: longer than {limit} characters", field)
        if "\x00" in value:
            raise InvalidReportError(f"{field}: contains a NUL character", field)
        if field in ("run_id", "host") and not value.strip():
            raise InvalidReportError(f"{field}: must not be empty", field)
    problem = host_name_problem(report.host)
    if problem is not None:
        raise InvalidReportError(f"host: {problem}", "host")
    apply_changed = report.apply.changed if report.apply else 0
    for field, number in (("compacted", report.compacted), ("interval_s", report.interval_s),
                          ("splay_s", report.splay_s), ("apply.changed", apply_changed)):
        if number is not None and not 0 <= number <= MAX_INT:
            raise InvalidReportError(f"{field}: must be from 0 to {MAX_INT}", field)


def _already_stored(conn: Connection, report: Report, raw: bytes) -> bool:
    """False when the run_id is new; True when the same report (as JSON values: key order and spacing
    aside) is stored under it; ConflictError when another report is."""
    row = conn.execute(RUN_STORED, {"key_run_id": report.run_id}).first()
    if row is None:
        return False
    if row.host != report.host:
        raise ConflictError(f"run_id {report.run_id!r} is already stored for another host: each run needs "
                            "its own run_id (a new uuid4)")
    stored, sent = json.loads(decompress(row.report)), json.loads(raw)
    if stored != sent:
        differ = sorted(k for k in stored.keys() | sent.keys() if stored.get(k) != sent.get(k))
        raise ConflictError(f"run_id {report.run_id!r} is already stored with a different report "
                            f"(differs in {', '.join(differ)[:200]}); the stored one is kept")
    return True


def _counts(report: Report) -> dict[str, int]:
    apply = report.apply
    return {
        "drift_count": len(report.drift),
        "failed_count": len(apply.failed_tasks) if apply else 0,
        "error_count": len(report.errors),
    }


def _run_row(report: Report, raw: bytes, received_at: datetime) -> dict[str, Any]:
    source = report.source
    return {
        "run_id": report.run_id, "host": report.host, "status": report.status.value,
        "mode": report.mode.value, "trigger": report.trigger.value,
        "phase_reached": report.phase_reached.value, "commit": source.commit, "ref": source.ref,
        "previous_commit": source.previous_commit, "agent_version": report.agent_version,
        "started_at": report.started_at, "finished_at": report.finished_at, "received_at": received_at,
        "changed": report.apply.changed if report.apply else 0, "compacted": report.compacted,
        "duration_s": report.durations_s.total, "report": compress(raw), **_counts(report),
    }


def _drift_rows(report: Report) -> list[dict[str, Any]]:
    return [
        {"run_id": report.run_id, "host": report.host, "play": item.play, "task": item.task,
         "role": item.role, "module": item.module, "kind": item.kind.value,
         "diff_count": len(item.diffs), "first_seen_at": item.first_seen_at}
        for item in report.drift
    ]


def _insert_drift(conn: Connection, report: Report) -> None:
    rows = _drift_rows(report)
    if rows:
        conn.execute(drift_items.insert(), rows)


@functools.cache
def _insert_ignore_stmt(dialect_name: str, table: Table) -> Insert:
    if dialect_name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def _insert_ignore(conn: Connection, table: Table, values: dict[str, Any]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL."""
    conn.execute(_insert_ignore_stmt(conn.dialect.name, table), values)


def _upsert_commit(conn: Connection, report: Report, received_at: datetime) -> None:
    """The commit's row, and the (commit, host) pair's (`host_commits`), where not stored yet."""
    source = report.source
    if not source.commit:
        return
    _insert_ignore(conn, commits, {
        "sha": source.commit, "author": source.author, "committed_at": source.committed_at,
        "subject": source.subject, "signature_status": source.signature.status.value,
        "signer": source.signature.signer, "first_seen_at": received_at,
    })
    _insert_ignore(conn, host_commits, {"commit": source.commit, "host": report.host})


def _host_state(report: Report) -> dict[str, Any]:
    pause = report.pause
    return {
        "last_run_id": report.run_id, "status": report.status.value, "mode": report.mode.value,
        "phase_reached": report.phase_reached.value, "commit": report.source.commit,
        "ref": report.source.ref, "paused": pause is not None or report.status is Status.PAUSED,
        "pause_reason": pause.reason if pause else None, "pause_until": pause.until if pause else None,
        "agent_version": report.agent_version, "interval_s": report.interval_s,
        "splay_s": report.splay_s, "last_finished_at": report.finished_at, **_counts(report),
    }


def _upsert_host(conn: Connection, report: Report, received_at: datetime, expect: Expectations) -> None:
    expected_s = (report.interval_s or expect.interval_s) + (report.splay_s or expect.splay_s)
    seen = {"last_seen_at": received_at, "due_at": received_at + timedelta(seconds=expected_s)}
    state = _host_state(report)
    _insert_ignore(conn, hosts, {"host": report.host, **state, **seen, "first_seen_at": received_at})
    conn.execute(HOST_SEEN, {"key_host": report.host, **seen})
    key = {"key_host": report.host, "key_finished_at": report.finished_at}
    if conn.execute(HOST_STATE_IF_NEWER, {**key, **state}).rowcount:
        conn.execute(ROLES_DELETE, {"key_host": report.host})
        if report.roles:
            conn.execute(host_roles.insert(), [{"host": report.host, "role": r} for r in set(report.roles)])


def prune(engine: Engine, *, older_than: datetime) -> int:
    """Delete runs finished before `older_than`, except each host's latest run. Returns how many."""
    latest = select(hosts.c.last_run_id)
    old = and_(runs.c.finished_at < older_than, runs.c.run_id.not_in(latest))
    total = 0
    while True:
        with db.write(engine) as conn:
            batch = [r for (r,) in conn.execute(select(runs.c.run_id).where(old).limit(PRUNE_BATCH))]
            if not batch:
                return total
            conn.execute(delete(drift_items).where(drift_items.c.run_id.in_(batch)))
            conn.execute(delete(runs).where(runs.c.run_id.in_(batch)))
        total += len(batch)


__all__ = ["Expectations", "compress", "decompress", "ingest", "prune"]


# ingest_group's batched statements, long-lived for bulk.executemany's plans
RUNS_INSERT = runs.insert()
DRIFT_INSERT = drift_items.insert()
HOST_ROLES_INSERT = host_roles.insert()
RUNS_PRESENT = select(runs.c.run_id).where(runs.c.run_id.in_(bindparam("run_ids", expanding=True)))


def ingest_group(engine: Engine, items: Sequence[tuple[Report, bytes, datetime]], *,
                 expect: Expectations = Expectations(),
                 revoked: Callable[[Connection], set[int]] | None = None,
                 checked: bool = False) -> list[bool | Exception]:
    """`ingest_batch`'s contract with batched statements: one SELECT for the batch's run_ids already
    stored, one executemany each for the runs and the commits, then the newest report of each host updates
    its row (hosts in name order, so that two processes' batches never deadlock). No savepoint per report:
    when anything of the batch fails, the transaction is rolled back and the batch is stored again by
    `ingest_batch` (a savepoint per report), so only the bad report gets its error. `revoked(conn)`, when
    given, returns the indexes of items whose token is no longer valid, checked in this same transaction:
    those get UnauthorizedError (401) and are never stored. `checked`: every report has passed
    `check_storable` already (api.post_report checks each before it is queued), so it is not checked again
    (a value that slipped through is then refused by the database, and `ingest_batch`, which checks, finds
    the report)."""
    results: list[bool | Exception | None] = [None] * len(items)
    prepared: list[tuple[Report, bytes, datetime]] = []
    for i, (report, raw, received_at) in enumerate(items):
        try:
            if not checked:
                check_storable(report)
            report = clamp(report, received_at)
        except CollectorError as e:
            results[i] = e
        prepared.append((report, raw, received_at))
    refused = [r for r in results]
    try:
        with db.write(engine) as conn:
            if revoked is not None:
                for i in revoked(conn):
                    results[i] = refused[i] = UnauthorizedError("unknown or revoked token")
            fresh = _new_in_batch(conn, prepared, results)
            if fresh:
                _write_fresh(conn, [prepared[i] for i in fresh], expect)
                for i in fresh:
                    results[i] = True
    except (DBAPIError, ConflictError):
        # Something of the batch was refused (a value, a race for a run_id, a conflict): nothing is stored.
        # Once more with a savepoint per report, so that only the bad one fails.
        retry = [i for i in range(len(items)) if refused[i] is None]
        for i, result in zip(retry, ingest_batch(engine, [items[i] for i in retry], expect=expect),
                             strict=True):
            results[i] = result
    return [r if r is not None else CollectorError("not stored") for r in results]


def _write_fresh(conn: Connection, fresh: Sequence[tuple[Report, bytes, datetime]],
                 expect: Expectations) -> None:
    """The rows of the batch's new reports, each table in as few statements as it allows."""
    bulk.executemany(conn, RUNS_INSERT, [_run_row(*item) for item in fresh])
    drift_rows = [row for report, _, _ in fresh for row in _drift_rows(report)]
    # one executemany for the batch's drift items, in the order of its runs
    bulk.executemany(conn, DRIFT_INSERT, drift_rows)
    bulk.executemany(conn, _insert_ignore_stmt(conn.dialect.name, commits), _commit_rows(fresh))
    # sorted, as the hosts are: two processes' batches take the pairs' locks in one order (PostgreSQL)
    pairs = sorted({(r.source.commit, r.host) for r, _, _ in fresh if r.source.commit})
    bulk.executemany(conn, _insert_ignore_stmt(conn.dialect.name, host_commits),
                     [{"commit": commit, "host": host} for commit, host in pairs])
    _upsert_hosts(conn, _newest_per_host(fresh), expect)
    # after the hosts' rows, as in ingest (_record_outcomes); the drift items' reads batched
    review_store.record_reports(conn, [(report, received_at) for report, _, received_at in fresh])
    for report, _, _ in fresh:
        rollout_ingest.record_report(conn, report)


def _new_in_batch(conn: Connection, prepared: Sequence[tuple[Report, bytes, datetime]],
                  results: list[bool | Exception | None]) -> list[int]:
    """Indexes of the reports to store; the others' results are set (False: the same report again)."""
    ids = [prepared[i][0].run_id for i in range(len(prepared)) if results[i] is None]
    present = set(conn.execute(RUNS_PRESENT, {"run_ids": ids}).scalars()) if ids else set()
    fresh: list[int] = []
    seen: set[str] = set()
    for i, (report, raw, _) in enumerate(prepared):
        if results[i] is not None:
            continue
        if report.run_id in present:
            results[i] = not _already_stored(conn, report, raw)  # stored: the same report (else 409)
        elif report.run_id in seen:
            results[i] = _same_in_batch(prepared, i)
        else:
            seen.add(report.run_id)
            fresh.append(i)
    return fresh


HOST_STATE_COLUMNS = ("last_run_id", "status", "mode", "phase_reached", "commit", "ref", "paused",
                      "pause_reason", "pause_until", "agent_version", "interval_s", "splay_s",
                      "last_finished_at", "drift_count", "failed_count", "error_count")


@functools.cache
def _host_upsert_stmt(dialect_name: str) -> Insert:
    """INSERT a host's row; when it exists, set last_seen_at and due_at, and the state columns
    (`_host_state`) only when the stored report finished no later than this one: `_upsert_host`'s three
    statements in one (the SET's expressions read the row as it was, on SQLite and PostgreSQL alike)."""
    insert = postgresql.insert(hosts) if dialect_name == "postgresql" else sqlite.insert(hosts)
    new = insert.excluded
    newer = hosts.c.last_finished_at <= new.last_finished_at
    state = {name: case((newer, new[name]), else_=hosts.c[name]) for name in HOST_STATE_COLUMNS}
    return insert.on_conflict_do_update(index_elements=[hosts.c.host], set_={
        "last_seen_at": new.last_seen_at, "due_at": new.due_at, **state})


HOST_ROLES_OF = select(hosts.c.host, hosts.c.last_run_id).where(
    hosts.c.host.in_(bindparam("hosts", expanding=True)))


def _upsert_hosts(conn: Connection, newest: Sequence[tuple[Report, bytes, datetime]],
                  expect: Expectations) -> None:
    """`_upsert_host` for each host's newest report of a batch (one per host) in one executemany of
    `_host_upsert_stmt`. Then one SELECT tells which hosts now hold this batch's run_id as last_run_id
    (the upsert took their row: a run_id of the batch is new, so no other writer set it): their roles are
    replaced. Hosts in name order, as `_newest_per_host` gives them."""
    if not newest:
        return
    rows = []
    for report, _, received_at in newest:
        expected_s = (report.interval_s or expect.interval_s) + (report.splay_s or expect.splay_s)
        rows.append({"host": report.host, **_host_state(report), "last_seen_at": received_at,
                     "due_at": received_at + timedelta(seconds=expected_s), "first_seen_at": received_at})
    bulk.executemany(conn, _host_upsert_stmt(conn.dialect.name), rows)
    run_of = {report.host: report for report, _, _ in newest}
    names = list(run_of)
    replaced: list[Report] = []
    for start in range(0, len(names), 500):
        for host, last_run_id in conn.execute(HOST_ROLES_OF, {"hosts": names[start:start + 500]}):
            if run_of[host].run_id == last_run_id:
                replaced.append(run_of[host])
    if not replaced:
        return
    replaced.sort(key=lambda r: r.host)
    bulk.executemany(conn, ROLES_DELETE, [{"key_host": r.host} for r in replaced])
    role_rows = [{"host": r.host, "role": role} for r in replaced for role in sorted(set(r.roles))]
    bulk.executemany(conn, HOST_ROLES_INSERT, role_rows)


def _commit_rows(batch: Sequence[tuple[Report, bytes, datetime]]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for report, _, received_at in sorted(batch, key=lambda item: item[0].source.commit or ""):
        source = report.source
        if source.commit and source.commit not in rows:
            rows[source.commit] = {
                "sha": source.commit, "author": source.author, "committed_at": source.committed_at,
                "subject": source.subject, "signature_status": source.signature.status.value,
                "signer": source.signature.signer, "first_seen_at": received_at}
    return list(rows.values())


def _newest_per_host(batch: Sequence[tuple[Report, bytes, datetime]]) -> list[tuple[Report, bytes, datetime]]:
    """Each host's report of the batch that finished last, hosts sorted by name. An older report of a host
    changes nothing `_upsert_host` would keep, except last_seen_at, which the newest one sets as well."""
    newest: dict[str, tuple[Report, bytes, datetime]] = {}
    for item in batch:
        held = newest.get(item[0].host)
        if held is None or item[0].finished_at >= held[0].finished_at:
            newest[item[0].host] = item
    return [newest[h] for h in sorted(newest)]


def _same_in_batch(prepared: Sequence[tuple[Report, bytes, datetime]], i: int) -> bool:
    """A run_id sent twice in one batch: the later one is a duplicate when the report is the same."""
    report, raw, _ = prepared[i]
    first = next(p for p in prepared[:i] if p[0].run_id == report.run_id)
    if first[0].host != report.host:
        raise ConflictError(f"run_id {report.run_id!r} is already stored for another host: each run needs "
                            "its own run_id (a new uuid4)")
    if json.loads(first[1]) != json.loads(raw):
        raise ConflictError(f"run_id {report.run_id!r} is already stored with a different report; the "
                            "stored one is kept")
    return False
