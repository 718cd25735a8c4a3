"""Evidence export for auditors (docs/drift-review.md section 7): for a time range and a scope (the fleet, a
role or a host), the runs, the drift items with their lifecycle, the exceptions, the rollout approvals and
actions, the review actions (audit log) and the commits with their signers.

Shape: a ZIP bundle, written as a stream (`bundle_chunks` yields bytes; nothing is held but one batch):
- `format=jsonl`: `evidence.jsonl`, one JSON object a line with a `"type"` field (`header`, `run`,
  `drift_item`, `exception`, `approval`, `rollout_action`, `review_action`, `commit`, `trailer`);
- `format=csv`: one CSV per type (`runs.csv`, `drift_items.csv`, ...; a CSV holds one shape), plus
  `header.json` and `trailer.json`;
- always `SHA256SUMS` (the `sha256sum` format) over the data files, and, when the collector has a signing
  key, `SHA256SUMS.sig`: an OpenSSH signature (`ssh-keygen -Y sign`, namespace `gitops-evidence`) and
  `evidence-key.pub`. An auditor checks it offline with `ssh-keygen -Y verify` and `sha256sum -c`.

Reads are keyset-paged batches of `BATCH` rows, each on its own short connection (SQLite and PostgreSQL
alike), so memory is flat at any size and no transaction stays open for the length of a download. Rows
arriving during the export are left out: each type is read as of `as_of` (the export's start).

Range: records whose time falls in [start, end) (runs by `finished_at`, review actions and approvals by
`at`); drift items and exceptions that were alive during it. Scope `role:NAME` means the hosts having
that role (inventory group, as reported) now, and items of that role.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, exists, func, or_, select

from agent import __version__
from agent.collector import drift_exceptions as dx
from agent.collector.errors import BadRequestError, CollectorError, NotFoundError
from agent.collector.review_store import exception_of
from agent.collector.tables import (
    commits,
    drift_exceptions,
    host_commits,
    host_roles,
    hosts,
    review_audit,
    review_items,
    rollout_actions,
    rollout_approvals,
    runs,
)
from agent.report import format_time, parse_time

BATCH = 1000
NAMESPACE = "gitops-evidence"  # the ssh-keygen -Y namespace: a signature for this purpose only
SIGNER = "gitops-collector"  # the principal the docs' allowed_signers line names
FORMATS = ("jsonl", "csv")
TYPES = ("run", "drift_item", "exception", "approval", "rollout_action", "review_action", "commit")
CSV_NAMES = {"run": "runs.csv", "drift_item": "drift_items.csv", "exception": "exceptions.csv",
             "approval": "approvals.csv", "rollout_action": "rollout_actions.csv",
             "review_action": "review_actions.csv", "commit": "commits.csv"}
COLUMNS: dict[str, tuple[str, ...]] = {
    "run": ("run_id", "host", "status", "mode", "trigger", "phase_reached", "commit", "ref",
            "previous_commit", "agent_version", "started_at", "finished_at", "received_at", "drift_count",
            "changed", "failed_count", "error_count"),
    "drift_item": ("id", "host", "role", "play", "ansible_role", "task_file", "task", "item", "nth",
                   "state", "kind", "kinds", "first_seen_at", "last_seen_at", "checks", "commits",
                   "commit_count", "module", "task_path", "acknowledged_at", "acknowledged_by",
                   "accepted_by", "resolved_at", "resolution"),
    "exception": ("id", "scope", "scope_fields", "host_pattern", "host_group", "owner", "reason", "ticket",
                  "created_at", "created_by", "expires_at", "revoked_at", "revoked_by"),
    "approval": ("commit", "plan_digest", "actor", "at", "reason"),
    "rollout_action": ("id", "commit", "action", "wave", "actor", "at", "reason"),
    "review_action": ("id", "at", "actor", "actor_kind", "action", "target", "reason", "details"),
    "commit": ("sha", "author", "committed_at", "subject", "signature_status", "signer", "first_seen_at"),
}
JSON_TEXT = {"kinds", "commits", "scope_fields", "details"}  # columns stored as JSON text


# -- the request: range and scope ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """`fleet`, `role:NAME` or `host:NAME`."""

    kind: str
    name: str | None = None

    def __str__(self) -> str:
        return self.kind if self.name is None else f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class Export:
    """What to export: records of [start, end) in `scope`, read as of `as_of`."""

    start: datetime
    end: datetime
    scope: Scope
    as_of: datetime


def parse_scope(text: str | None) -> Scope:
    """`fleet` (also when absent), `role:NAME` or `host:NAME`; BadRequestError naming `scope` otherwise."""
    if text is None or text == "" or text == "fleet":
        return Scope("fleet")
    kind, sep, name = text.partition(":")
    if not sep or kind not in ("role", "host") or not name.strip():
        raise BadRequestError(f"scope: {text[:60]!r} is not fleet, role:NAME or host:NAME")
    return Scope(kind, name.strip())


def without_zone(text: str) -> bool:
    """Whether `text` is an ISO 8601 time without a zone (`2026-11-19T00:00`): RFC 3339 needs one, and
    guessing one would move the range by hours."""
    try:
        return datetime.fromisoformat(text).tzinfo is None
    except ValueError:
        return False


def _time(text: str | None, name: str) -> datetime:
    if text is None or text == "":
        raise BadRequestError(f"{name}: required (a date YYYY-MM-DD or an RFC 3339 time)")
    try:
        if len(text) == 10:
            return parse_time(f"{text}T00:00:00Z")
        return parse_time(text)
    except ValueError as e:
        if without_zone(text):
            raise BadRequestError(f"{name}: {text[:40]!r} has no time zone: add Z for UTC, or +HH:MM") from e
        raise BadRequestError(f"{name}: {text[:40]!r} is not a date (YYYY-MM-DD) or an RFC 3339 time") from e


def parse_request(start: str | None, end: str | None, scope: str | None, *, now: datetime) -> Export:
    """The export's request from its text parameters (`from`, `to`: a date means 00:00 UTC that day;
    `to` absent means now). BadRequestError (one line naming the parameter) for a bad or empty range."""
    begin = _time(start, "from")
    finish = _time(end, "to") if end else now
    if finish <= begin:
        raise BadRequestError(f"to: {format_time(finish)} is not after from ({format_time(begin)})")
    return Export(begin, finish, parse_scope(scope), now)


def check_scope(engine: Engine, scope: Scope) -> None:
    """NotFoundError when the scope names a host or role this collector has never heard of."""
    if scope.kind == "fleet":
        return
    with engine.connect() as conn:
        if scope.kind == "host":
            known = conn.execute(select(hosts.c.host).where(hosts.c.host == scope.name)).first()
            ran = select(runs.c.run_id).where(runs.c.host == scope.name).limit(1)
            known = known or conn.execute(ran).first()
        else:
            known = conn.execute(select(host_roles.c.host).where(host_roles.c.role == scope.name)
                                 .limit(1)).first()
            known = known or conn.execute(select(review_items.c.id).where(review_items.c.role == scope.name)
                                          .limit(1)).first()
    if known is None:
        raise NotFoundError(f"scope: no {scope.kind} {scope.name!r} is known to this collector")


# -- scope filters -----------------------------------------------------------------------------------


def _hosts_of(scope: Scope) -> Any:
    return select(host_roles.c.host).where(host_roles.c.role == scope.name).scalar_subquery()


def _run_in_scope(scope: Scope) -> ColumnElement[bool] | None:
    if scope.kind == "host":
        return runs.c.host == scope.name
    if scope.kind == "role":
        return runs.c.host.in_(_hosts_of(scope))
    return None


def _item_in_scope(scope: Scope) -> ColumnElement[bool] | None:
    if scope.kind == "host":
        return review_items.c.host == scope.name
    if scope.kind == "role":
        return review_items.c.role == scope.name
    return None


def _pair_in_scope(scope: Scope) -> ColumnElement[bool] | None:
    """`host_commits` rows (a commit some host ever ran, its runs pruned or not) of the scope's hosts."""
    if scope.kind == "host":
        return host_commits.c.host == scope.name
    if scope.kind == "role":
        return host_commits.c.host.in_(_hosts_of(scope))
    return None


def _commit_used(column: Any, scope: Scope) -> ColumnElement[bool] | None:
    """Rows about a commit some host in scope ran (any time): approvals and rollout actions."""
    where = _pair_in_scope(scope)
    if where is None:
        return None
    return exists(select(host_commits.c.host).where(host_commits.c.commit == column, where))


def _where(*parts: ColumnElement[bool] | None) -> ColumnElement[bool]:
    return and_(*(p for p in parts if p is not None))


# -- one type at a time: keyset-paged batches ---------------------------------------------------------


Fetch = Callable[[Connection, Any], Sequence[Any]]


def _paged(engine: Engine, fetch: Fetch, key: Callable[[Any], Any]) -> Iterator[Any]:
    """Rows from `fetch(conn, after)` batch by batch, each batch on a short connection of its own."""
    after = None
    while True:
        with engine.connect() as conn:
            rows = fetch(conn, after)
        yield from rows
        if len(rows) < BATCH:
            return
        after = key(rows[-1])


def _runs(engine: Engine, req: Export) -> Iterator[Any]:
    cols = [runs.c[name] for name in COLUMNS["run"]]
    rest = _where(runs.c.finished_at < req.end, runs.c.received_at <= req.as_of, _run_in_scope(req.scope))

    def fetch(conn: Connection, after: Any) -> Sequence[Any]:
        # the lower bound is the key's (one bound for the index to seek to, not the range's and the key's)
        if after is None:
            where = _where(rest, runs.c.finished_at >= req.start)
        else:
            where = _where(rest, runs.c.finished_at >= after[0],
                           or_(runs.c.finished_at > after[0], runs.c.run_id > after[1]))
        query = select(*cols).where(where).order_by(runs.c.finished_at, runs.c.run_id).limit(BATCH)
        return conn.execute(query).all()

    return _paged(engine, fetch, lambda r: (r.finished_at, r.run_id))


def _by_id(engine: Engine, table: Any, where: ColumnElement[bool], names: Sequence[str]) -> Iterator[Any]:
    cols = [table.c[name] for name in names]

    def fetch(conn: Connection, after: Any) -> Sequence[Any]:
        query = select(*cols).where(where)
        if after is not None:
            query = query.where(table.c.id > after)
        return conn.execute(query.order_by(table.c.id).limit(BATCH)).all()

    return _paged(engine, fetch, lambda r: r.id)


def _items(engine: Engine, req: Export) -> Iterator[Any]:
    alive = _where(review_items.c.first_seen_at < req.end,
                   or_(review_items.c.resolved_at.is_(None), review_items.c.resolved_at >= req.start),
                   _item_in_scope(req.scope))
    return _by_id(engine, review_items, alive, COLUMNS["drift_item"])


def _exception_covers(row: Any, scope: Scope, conn: Connection) -> bool:
    """Whether an exception bears on the scope: its scope names the host or role, or it accepted (or could
    accept) an item in scope."""
    if scope.kind == "fleet":
        return True
    exc = exception_of(row)
    if scope.kind == "host":
        assert scope.name is not None
        if exc.key is not None:
            return exc.key.host == scope.name
        groups = set(conn.execute(select(host_roles.c.role).where(host_roles.c.host == scope.name)).scalars())
        return exc.hosts.matches(scope.name, groups)
    if exc.key is not None and exc.key.task.role == scope.name:
        return True
    if exc.task is not None and exc.task.role == scope.name:
        return True
    if exc.scope is dx.ExceptionScope.ROLE:
        if exc.role_kind is dx.RoleKind.PLAYBOOK:
            return exc.role == scope.name
        uses = conn.execute(select(review_items.c.id).where(review_items.c.role == scope.name,
                                                            review_items.c.ansible_role == exc.role)
                            .limit(1)).first()
        return uses is not None
    accepted = conn.execute(select(review_items.c.id).where(
        review_items.c.accepted_by == row.id, review_items.c.role == scope.name).limit(1)).first()
    return accepted is not None


def _exceptions(engine: Engine, req: Export, *, alive: bool = True) -> Iterator[Any]:
    """Exceptions in scope that were in force at some time of the range (or, `alive=False`, any)."""
    where = _where(drift_exceptions.c.created_at <= req.as_of)
    if alive:
        t = drift_exceptions.c
        where = _where(where, t.created_at < req.end, t.expires_at >= req.start,
                       or_(t.revoked_at.is_(None), t.revoked_at >= req.start))

    def fetch(conn: Connection, after: Any) -> _Batch:
        query = select(drift_exceptions).where(where)
        if after is not None:
            query = query.where(drift_exceptions.c.id > after)
        batch = conn.execute(query.order_by(drift_exceptions.c.id).limit(BATCH)).all()
        kept = [r for r in batch if _exception_covers(r, req.scope, conn)]
        return _Batch(kept, len(batch), batch[-1].id if batch else None)

    return _paged_filtered(engine, fetch)


class _Batch(list[Any]):
    """A filtered batch that remembers how many rows the query gave and the last key (for paging)."""

    def __init__(self, rows: list[Any], fetched: int, last: Any) -> None:
        super().__init__(rows)
        self.fetched, self.last = fetched, last


def _paged_filtered(engine: Engine, fetch: Callable[[Connection, Any], _Batch]) -> Iterator[Any]:
    after = None
    while True:
        with engine.connect() as conn:
            batch = fetch(conn, after)
        yield from batch
        if batch.fetched < BATCH:
            return
        after = batch.last


def _review_actions(engine: Engine, req: Export, exception_ids: set[int]) -> Iterator[Any]:
    at = review_audit.c.at
    in_range = _where(at >= req.start, at < req.end, at <= req.as_of)
    item_scope = _item_in_scope(req.scope)

    def fetch(conn: Connection, after: Any) -> _Batch:
        query = select(review_audit).where(in_range)
        if after is not None:
            query = query.where(review_audit.c.id > after)
        batch = conn.execute(query.order_by(review_audit.c.id).limit(BATCH)).all()
        if item_scope is None:
            return _Batch(list(batch), len(batch), batch[-1].id if batch else None)
        item_ids = {_target_id(r.target, "item") for r in batch} - {None}
        in_scope = set(conn.execute(select(review_items.c.id).where(
            review_items.c.id.in_(item_ids), item_scope)).scalars()) if item_ids else set()
        kept = [r for r in batch if _target_id(r.target, "item") in in_scope
                or _target_id(r.target, "exception") in exception_ids]
        return _Batch(kept, len(batch), batch[-1].id if batch else None)

    return _paged_filtered(engine, fetch)


def _target_id(target: str, kind: str) -> int | None:
    prefix, _, number = target.partition(":")
    return int(number) if prefix == kind and number.isdigit() else None


def _rollout(engine: Engine, req: Export, table: Any, names: Sequence[str]) -> Iterator[Any]:
    where = _where(table.c.at >= req.start, table.c.at < req.end, table.c.at <= req.as_of,
                   _commit_used(table.c.commit, req.scope))
    if "id" in names:
        return _by_id(engine, table, where, names)
    cols = [table.c[name] for name in names]

    def fetch(conn: Connection, after: Any) -> Sequence[Any]:
        query = select(*cols).where(where)
        if after is not None:
            c = table.c
            query = query.where(or_(c.at > after[0], and_(c.at == after[0], or_(
                c.commit > after[1], and_(c.commit == after[1], c.plan_digest > after[2])))))
        order = (table.c.at, table.c.commit, table.c.plan_digest)
        return conn.execute(query.order_by(*order).limit(BATCH)).all()

    return _paged(engine, fetch, lambda r: (r.at, r.commit, r.plan_digest))


def _commits(engine: Engine, req: Export) -> Iterator[Any]:
    used: ColumnElement[bool] = exists(select(runs.c.run_id).where(_where(
        runs.c.commit == commits.c.sha, runs.c.finished_at >= req.start, runs.c.finished_at < req.end,
        runs.c.received_at <= req.as_of, _run_in_scope(req.scope))))
    pairs = _pair_in_scope(req.scope)
    if pairs is not None:  # only the commits the scope's hosts ran are looked for in the window's runs
        used = and_(commits.c.sha.in_(select(host_commits.c.commit).where(pairs)), used)
    cols = [commits.c[name] for name in COLUMNS["commit"]]

    def fetch(conn: Connection, after: Any) -> Sequence[Any]:
        query = select(*cols).where(used)
        if after is not None:
            query = query.where(commits.c.sha > after)
        return conn.execute(query.order_by(commits.c.sha).limit(BATCH)).all()

    return _paged(engine, fetch, lambda r: r.sha)


def records(engine: Engine, req: Export) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, record) for every record of the export, type by type in the order of TYPES."""
    exception_ids: set[int] = set()
    for row in _runs(engine, req):
        yield "run", _record("run", row)
    for row in _items(engine, req):
        yield "drift_item", _record("drift_item", row)
    for row in _exceptions(engine, req):
        yield "exception", _record("exception", row)
    if req.scope.kind != "fleet":  # review actions on any exception bearing on the scope, alive or not
        exception_ids = {r.id for r in _exceptions(engine, req, alive=False)}
    for row in _rollout(engine, req, rollout_approvals, COLUMNS["approval"]):
        yield "approval", _record("approval", row)
    for row in _rollout(engine, req, rollout_actions, COLUMNS["rollout_action"]):
        yield "rollout_action", _record("rollout_action", row)
    for row in _review_actions(engine, req, exception_ids):
        yield "review_action", _record("review_action", row)
    for row in _commits(engine, req):
        yield "commit", _record("commit", row)


def _record(kind: str, row: Any) -> dict[str, Any]:
    mapping = row._mapping
    out: dict[str, Any] = {}
    for name in COLUMNS[kind]:
        value = mapping[name]
        if isinstance(value, datetime):
            value = format_time(value)
        elif name in JSON_TEXT and isinstance(value, str):
            value = json.loads(value)
        out[name] = value
    return out


def header(req: Export) -> dict[str, Any]:
    return {"type": "header", "format": "gitops-evidence/1", "collector_version": __version__,
            "from": format_time(req.start), "to": format_time(req.end), "scope": str(req.scope),
            "as_of": format_time(req.as_of), "types": list(TYPES)}


# -- the bundle: a ZIP written as a stream -------------------------------------------------------------


class _Sink:
    """A write-only file for zipfile (no tell/seek: zipfile then writes data descriptors, for streaming);
    `take()` hands over what was written since the last call."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class _Entry:
    """One file of the bundle being written: hashes what goes in (for SHA256SUMS) and counts it."""

    def __init__(self, archive: zipfile.ZipFile, name: str, when: datetime) -> None:
        info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        self.name = name
        self.sha256 = hashlib.sha256()
        self._file = archive.open(info, "w", force_zip64=True)

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        self.sha256.update(data)
        self._file.write(data)

    def close(self) -> None:
        self._file.close()


def _csv_row(kind: str, record: dict[str, Any], writer: Any) -> None:
    row = []
    for name in COLUMNS[kind]:
        value = record[name]
        if isinstance(value, (list, dict)):
            value = json.dumps(value, ensure_ascii=False, sort_keys=True)
        row.append("" if value is None else value)
    writer.writerow(row)


def bundle_chunks(engine: Engine, req: Export, fmt: str, key: SigningKey | None) -> Iterator[bytes]:
    """The bundle's bytes, a chunk at a time (about one batch of records each)."""
    sink = _Sink()
    sums: list[tuple[str, str]] = []
    counts = dict.fromkeys(TYPES, 0)
    with zipfile.ZipFile(sink, "w") as archive:  # a write-only file: zipfile streams
        if fmt == "jsonl":
            entry = _Entry(archive, "evidence.jsonl", req.as_of)
            entry.write(json.dumps(header(req), ensure_ascii=False) + "\n")
            encode = json.JSONEncoder(ensure_ascii=False).encode
            lines: list[str] = []
            for kind, record in records(engine, req):
                counts[kind] += 1
                lines.append(encode({"type": kind, **record}))
                if len(lines) == BATCH:  # one write (hash, deflate) per batch, then hand the bytes on
                    entry.write("\n".join(lines) + "\n")
                    lines.clear()
                    yield sink.take()
            if lines:
                entry.write("\n".join(lines) + "\n")
            entry.write(json.dumps(_trailer(counts)) + "\n")
            entry.close()
            sums.append((entry.name, entry.sha256.hexdigest()))
        else:
            yield from _csv_files(archive, sink, engine, req, counts, sums)
        data = _sums_text(sums)
        archive.writestr(zipfile.ZipInfo("SHA256SUMS", req.as_of.timetuple()[:6]), data)
        if key is not None:
            archive.writestr(zipfile.ZipInfo("SHA256SUMS.sig", req.as_of.timetuple()[:6]), key.sign(data))
            public = zipfile.ZipInfo("evidence-key.pub", req.as_of.timetuple()[:6])
            archive.writestr(public, key.public + "\n")
        yield sink.take()
    yield sink.take()


def _csv_files(archive: zipfile.ZipFile, sink: _Sink, engine: Engine, req: Export, counts: dict[str, int],
               sums: list[tuple[str, str]]) -> Iterator[bytes]:
    head = _Entry(archive, "header.json", req.as_of)
    head.write(json.dumps(header(req), ensure_ascii=False, indent=2) + "\n")
    head.close()
    sums.append((head.name, head.sha256.hexdigest()))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    entry: _Entry | None = None
    current = None
    for kind, record in _with_empty_types(records(engine, req)):
        if kind != current:
            if entry is not None:
                entry.write(buffer.getvalue())
                buffer.seek(0)
                buffer.truncate()
                entry.close()
                sums.append((entry.name, entry.sha256.hexdigest()))
            entry, current = _Entry(archive, CSV_NAMES[kind], req.as_of), kind
            writer.writerow(COLUMNS[kind])
            entry.write(buffer.getvalue())
            buffer.seek(0)
            buffer.truncate()
        if record is None:
            continue
        counts[kind] += 1
        assert entry is not None
        _csv_row(kind, record, writer)
        if counts[kind] % BATCH == 0:  # one write (hash, deflate) per batch, then hand the bytes on
            entry.write(buffer.getvalue())
            buffer.seek(0)
            buffer.truncate()
            yield sink.take()
    if entry is not None:
        entry.write(buffer.getvalue())
        entry.close()
        sums.append((entry.name, entry.sha256.hexdigest()))
    tail = _Entry(archive, "trailer.json", req.as_of)
    tail.write(json.dumps(_trailer(counts), indent=2) + "\n")
    tail.close()
    sums.append((tail.name, tail.sha256.hexdigest()))


def _with_empty_types(
        found: Iterator[tuple[str, dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """The records, with a (type, None) marker for each type so that an empty type still gets its CSV."""
    following = 0  # the index in TYPES of the first type not begun yet
    for kind, record in found:
        position = TYPES.index(kind)
        while following < position:
            yield TYPES[following], None
            following += 1
        following = max(following, position + 1)
        yield kind, record
    for kind in TYPES[following:]:
        yield kind, None


def _trailer(counts: dict[str, int]) -> dict[str, Any]:
    return {"type": "trailer", "counts": counts}


def _sums_text(sums: list[tuple[str, str]]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sums)


# -- the signing key -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """An OpenSSH private key file (no passphrase) the collector signs evidence with, and its public key
    line. Signing runs `ssh-keygen -Y sign` (OpenSSH's file signatures, PROTOCOL.sshsig)."""

    path: Path
    public: str

    def sign(self, data: str) -> str:
        """The armoured signature of `data` (UTF-8) in namespace NAMESPACE; CollectorError on failure."""
        try:
            done = subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(self.path), "-n", NAMESPACE],
                                  input=data.encode("utf-8"), capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CollectorError(f"evidence key {self.path}: ssh-keygen -Y sign failed ({e})") from e
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise CollectorError(f"evidence key {self.path}: ssh-keygen -Y sign failed "
                                 f"({message[-1] if message else done.returncode})")
        return done.stdout.decode("ascii")

    @property
    def allowed_signers(self) -> str:
        """The line for the auditor's allowed_signers file (ssh-keygen(1) ALLOWED SIGNERS)."""
        return f'{SIGNER} namespaces="{NAMESPACE}" {self.public}'


def load_key(path: Path) -> SigningKey:
    """Check a signing key (`serve --evidence-key`, `drift export --key`): a readable OpenSSH private key
    without passphrase, not readable by group or others (ssh-keygen refuses those too). One-line
    CollectorError otherwise."""
    if shutil.which("ssh-keygen") is None:
        raise CollectorError(f"evidence key {path}: signing needs ssh-keygen (OpenSSH client), not found")
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise CollectorError(f"evidence key {path}: cannot read it ({e.strerror})") from e
    if mode & 0o077:
        raise CollectorError(f"evidence key {path}: permissions {stat.S_IMODE(mode):04o} let others read "
                             f"the private key (chmod 600 {path})")
    done = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", str(path)], capture_output=True, timeout=30,
                          check=False, stdin=subprocess.DEVNULL, env={**os.environ, "SSH_ASKPASS": ""})
    if done.returncode != 0:
        raise CollectorError(f"evidence key {path}: not an OpenSSH private key without passphrase "
                             "(make one with ssh-keygen -t ed25519 -N '' -f FILE)")
    return SigningKey(path, " ".join(done.stdout.decode("ascii").split()[:2]))


# -- the printable summary -----------------------------------------------------------------------------


def summary(engine: Engine, req: Export) -> dict[str, Any]:
    """Counts for the printable page: runs by status, drift items by state and resolution, the
    exceptions (few), and the counts of the other types (read through the same filters as the export)."""
    run_where = _where(runs.c.finished_at >= req.start, runs.c.finished_at < req.end,
                       runs.c.received_at <= req.as_of, _run_in_scope(req.scope))
    item_where = _where(review_items.c.first_seen_at < req.end,
                        or_(review_items.c.resolved_at.is_(None), review_items.c.resolved_at >= req.start),
                        _item_in_scope(req.scope))
    with engine.connect() as conn:
        by_status = {str(k): int(n) for k, n in conn.execute(
            select(runs.c.status, func.count()).where(run_where).group_by(runs.c.status))}
        run_hosts = conn.execute(select(func.count(runs.c.host.distinct())).where(run_where)).scalar_one()
        by_state = {str(k): int(n) for k, n in conn.execute(
            select(review_items.c.state, func.count()).where(item_where).group_by(review_items.c.state))}
        by_resolution = {str(k): int(n) for k, n in conn.execute(
            select(review_items.c.resolution, func.count())
            .where(item_where, review_items.c.resolution.is_not(None)).group_by(review_items.c.resolution))}
    exceptions = [_record("exception", r) for r in _exceptions(engine, req)]
    exception_ids = {e["id"] for e in exceptions}
    if req.scope.kind != "fleet":
        exception_ids = {r.id for r in _exceptions(engine, req, alive=False)}
    return {
        "header": header(req), "runs": sum(by_status.values()), "runs_by_status": by_status,
        "hosts_with_runs": run_hosts, "drift_items": sum(by_state.values()), "items_by_state": by_state,
        "items_by_resolution": by_resolution, "exceptions": exceptions,
        "approvals": sum(1 for _ in _rollout(engine, req, rollout_approvals, COLUMNS["approval"])),
        "rollout_actions": sum(1 for _ in _rollout(engine, req, rollout_actions, COLUMNS["rollout_action"])),
        "review_actions": sum(1 for _ in _review_actions(engine, req, exception_ids)),
        "commits": [_record("commit", r) for r in islice(_commits(engine, req), 200)],
        "commit_count": sum(1 for _ in _commits(engine, req)),
    }

