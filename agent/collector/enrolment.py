"""Self-enrolment: a new host asks for its own ingest token and gets it once an operator approves
(Salt's key accept), or at once when a policy allows (Puppet's autosign): docs/collector.md "Enrolment",
the threats in docs/trust.md.

- `request(...)`: a host's request, authenticated by a site enrolment secret (a token of kind "enrol",
  only its hash stored) or by a client certificate naming the host. It carries the SHA-256 of a pickup
  secret that only the host knows. Asking again with the same host and pickup hash answers the same
  request (a lost answer is harmless). Pending requests are capped in total, per peer address and per
  host name (TooManyError, 429), so a leaked site secret cannot fill the database.
- `pickup(...)`: the host's poll with its pickup secret: pending, denied, or approved with a new ingest
  token, shown in this one answer. Asking again after that (the answer was lost) revokes the token it
  gave and issues another, so at most one token of a request is ever valid; once that token was revoked
  (by `token revoke`), the request gives none (403), so a kept pickup secret cannot undo a revocation.
- `decide(...)`: approve or deny pending requests by id, host-name pattern (fnmatch) or group, with who,
  when and why stored on each request. A host name that already has a valid ingest token or reports
  (`existing`), or that has more than one request pending, is never approved by pattern, group or
  autosign: only by its id, with `allow_existing` for the first.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, text, update

from agent.collector import db
from agent.collector.errors import BadRequestError, ForbiddenError, NotFoundError, TooManyError
from agent.collector.hostnames import host_name_problem
from agent.collector.tables import enrolments, hosts, tokens
from agent.collector.tokens import TokenKind, hash_token, mint

log = logging.getLogger(__name__)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_GROUP = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,254}")  # an inventory group name
MAX_GROUPS = 64
MAX_REASON_CHARS = 1000
ENROL_LOCK = 0x656E726F6C  # "enrol": PostgreSQL's transaction lock that serializes enrolment writes


class EnrolState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"  # the host has not collected its token yet
    DENIED = "denied"
    COLLECTED = "collected"  # the host has its token


class EnrolAuth(enum.StrEnum):
    SECRET = "secret"  # noqa: S105 (a label) a site enrolment secret (`token create --enrol NAME`)
    CERTIFICATE = "certificate"  # a client certificate from the site's CA naming the host


@dataclass(frozen=True)
class EnrolPolicy:
    """`serve --enrol-autosign PATTERN` and the caps on pending requests."""

    autosign: tuple[str, ...] = ()  # fnmatch patterns of host names; certificate requests only
    max_pending: int = 1000
    max_pending_per_address: int = 20
    max_pending_per_host: int = 3


@dataclass(frozen=True)
class Enrolment:
    id: str
    host: str
    groups: tuple[str, ...]
    state: EnrolState
    auth: EnrolAuth
    auth_name: str
    address: str
    requested_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None
    existing: bool  # the host name already has a valid ingest token or has reported

    def as_json(self) -> dict[str, Any]:
        def stamp(t: datetime | None) -> str | None:
            return t.isoformat().replace("+00:00", "Z") if t else None

        return {"id": self.id, "host": self.host, "groups": list(self.groups), "state": self.state.value,
                "auth": self.auth.value, "auth_name": self.auth_name, "address": self.address,
                "requested_at": stamp(self.requested_at), "decided_at": stamp(self.decided_at),
                "decided_by": self.decided_by, "reason": self.reason, "existing": self.existing}


@dataclass(frozen=True)
class Selection:
    """Which pending requests a decision is about: ids, or every match of a host pattern or a group."""

    ids: tuple[str, ...] = ()
    pattern: str | None = None
    group: str | None = None

    def check(self) -> None:
        given = sum((bool(self.ids), self.pattern is not None, self.group is not None))
        if given != 1:
            raise BadRequestError("give exactly one of: request ids, a host-name pattern, a group")

    @property
    def bulk(self) -> bool:
        return not self.ids


@dataclass(frozen=True)
class Decision:
    decided: tuple[Enrolment, ...]
    skipped: tuple[tuple[Enrolment, str], ...]  # (request, why it was left pending)


def check_request(host: Any, groups: Any, pickup_hash: Any) -> tuple[str, ...]:
    """The request's groups, after checking every field (BadRequestError naming the first bad one)."""
    problem = host_name_problem(host) if isinstance(host, str) else "must be a string"
    if problem is not None:
        raise BadRequestError(f"host: {problem}")
    if not isinstance(pickup_hash, str) or not _SHA256_HEX.fullmatch(pickup_hash):
        raise BadRequestError("pickup_sha256: expected the SHA-256 of the pickup secret, 64 lowercase hex")
    if groups is None:
        return ()
    if not isinstance(groups, list) or len(groups) > MAX_GROUPS:
        raise BadRequestError(f"groups: expected a list of at most {MAX_GROUPS} inventory group names")
    for group in groups:
        if not isinstance(group, str) or not _GROUP.fullmatch(group):
            raise BadRequestError(f"groups: {str(group)[:60]!r} is not an inventory group name")
    return tuple(dict.fromkeys(groups))


def _existing(conn: Connection, host: str) -> bool:
    token = conn.execute(select(tokens.c.id).where(
        tokens.c.name == host, tokens.c.kind == TokenKind.INGEST.value, tokens.c.revoked_at.is_(None))
    ).first()
    reported = conn.execute(select(hosts.c.host).where(hosts.c.host == host)).first()
    return token is not None or reported is not None


def _row(conn: Connection, row: Any) -> Enrolment:
    return Enrolment(row.id, row.host, tuple(json.loads(row.groups)), EnrolState(row.state),
                     EnrolAuth(row.auth), row.auth_name, row.address, row.requested_at, row.decided_at,
                     row.decided_by, row.reason, _existing(conn, row.host))


def _serialize(conn: Connection) -> None:
    """One enrolment write at a time across collector processes, so the caps and the one-token rule hold
    under concurrency (SQLite's writer lock does this by itself)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ENROL_LOCK})


def _pending_count(conn: Connection, *where: Any) -> int:
    query = select(func.count()).select_from(enrolments).where(
        enrolments.c.state == EnrolState.PENDING.value, *where)
    return int(conn.execute(query).scalar_one())


def _check_caps(conn: Connection, host: str, address: str, policy: EnrolPolicy) -> None:
    if _pending_count(conn) >= policy.max_pending:
        raise TooManyError(f"{policy.max_pending} enrolment requests are pending already: ask an operator to "
                           "decide them (gitops-collector enrol list)")
    if _pending_count(conn, enrolments.c.address == address) >= policy.max_pending_per_address:
        raise TooManyError(f"{policy.max_pending_per_address} enrolment requests from {address} are pending "
                           "already")
    if _pending_count(conn, enrolments.c.host == host) >= policy.max_pending_per_host:
        raise TooManyError(f"{policy.max_pending_per_host} enrolment requests for host {host!r} are pending "
                           "already")


def request(engine: Engine, *, host: str, groups: tuple[str, ...], pickup_hash: str, auth: EnrolAuth,
            auth_name: str, address: str, policy: EnrolPolicy, now: datetime) -> tuple[Enrolment, bool]:
    """Record a host's request (or find the same one again); (request, True when new). Autosigned when it
    is certificate-authenticated, its host matches `policy.autosign`, and the host is not `existing`."""
    with db.write(engine) as conn:
        _serialize(conn)
        same = conn.execute(select(enrolments).where(
            enrolments.c.host == host, enrolments.c.pickup_hash == pickup_hash)).first()
        if same is not None:
            return _row(conn, same), False
        _check_caps(conn, host, address, policy)
        values: dict[str, Any] = {
            "id": secrets.token_hex(8), "host": host, "groups": json.dumps(list(groups)),
            "pickup_hash": pickup_hash, "state": EnrolState.PENDING.value, "auth": auth.value,
            "auth_name": auth_name[:255], "address": address[:64], "requested_at": now}
        pattern = next((p for p in policy.autosign if fnmatch.fnmatchcase(host, p)), None)
        if auth is EnrolAuth.CERTIFICATE and pattern is not None and not _existing(conn, host):
            values.update(state=EnrolState.APPROVED.value, decided_at=now, decided_by=f"autosign:{pattern}",
                          reason=f"certificate names {host}, which matches serve --enrol-autosign {pattern}")
        conn.execute(enrolments.insert().values(**values))
        row = conn.execute(select(enrolments).where(enrolments.c.id == values["id"])).one()
        made = _row(conn, row)
    log.info("enrolment requested: id=%s host=%s auth=%s address=%s state=%s", made.id, host, auth.value,
             address, made.state.value)
    return made, True


def pickup(engine: Engine, request_id: str, pickup_secret: str, *,
           now: datetime) -> tuple[Enrolment, str | None]:
    """The request's state for the host holding its pickup secret, and its new ingest token once
    approved (None otherwise). NotFoundError for an unknown id or a wrong secret alike."""
    with db.write(engine) as conn:
        _serialize(conn)
        row = conn.execute(select(enrolments).where(enrolments.c.id == request_id)).first()
        digest = hashlib.sha256(pickup_secret.encode("utf-8")).hexdigest()
        if row is None or not hmac.compare_digest(row.pickup_hash, digest):
            raise NotFoundError("no enrolment request with this id and pickup secret")
        if row.state not in (EnrolState.APPROVED.value, EnrolState.COLLECTED.value):
            return _row(conn, row), None
        if row.token_id is not None:  # asked again: the earlier answer was lost, so its token goes
            earlier = update(tokens).where(tokens.c.id == row.token_id, tokens.c.revoked_at.is_(None))
            revoked = conn.execute(earlier.values(revoked_at=now)).rowcount
            if not revoked:  # an operator revoked it: a kept pickup secret must not undo that
                raise ForbiddenError(f"the token of enrolment request {request_id} was revoked; this "
                                     "request gives no other (a new request needs a new approval)")
        secret, prefix = mint()
        result = conn.execute(tokens.insert().values(kind=TokenKind.INGEST.value, name=row.host,
                                                     token_hash=hash_token(secret), prefix=prefix,
                                                     created_at=now))
        (token_id,) = result.inserted_primary_key or (0,)
        conn.execute(update(enrolments).where(enrolments.c.id == request_id).values(
            state=EnrolState.COLLECTED.value, token_id=token_id, collected_at=now))
        row = conn.execute(select(enrolments).where(enrolments.c.id == request_id)).one()
        made = _row(conn, row)
    log.info("enrolment token collected: id=%s host=%s token=%s", request_id, made.host, prefix)
    return made, secret


def list_requests(engine: Engine, states: Sequence[EnrolState] = (EnrolState.PENDING,)) -> list[Enrolment]:
    """Requests in `states` (all when empty), oldest first."""
    query = select(enrolments).order_by(enrolments.c.requested_at, enrolments.c.id)
    if states:
        query = query.where(enrolments.c.state.in_([s.value for s in states]))
    with engine.connect() as conn:
        return [_row(conn, r) for r in conn.execute(query).all()]


def _selected(conn: Connection, selection: Selection, states: tuple[EnrolState, ...]) -> list[Enrolment]:
    query = select(enrolments).where(enrolments.c.state.in_([s.value for s in states]))
    if selection.ids:
        query = query.where(enrolments.c.id.in_(selection.ids))
    rows = [_row(conn, r) for r in conn.execute(query.order_by(enrolments.c.requested_at)).all()]
    if selection.ids:
        missing = sorted(set(selection.ids) - {r.id for r in rows})
        if missing:
            wanted = "/".join(s.value for s in states)
            raise NotFoundError(f"no {wanted} enrolment request {missing[0]!r}"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return rows
    if selection.pattern is not None:
        return [r for r in rows if fnmatch.fnmatchcase(r.host, selection.pattern)]
    return [r for r in rows if selection.group in r.groups]


def _approval_problem(request_: Enrolment, selection: Selection, allow_existing: bool,
                      others: int) -> str | None:
    if request_.existing and (selection.bulk or not allow_existing):
        return (f"host {request_.host!r} already has a token or reports: approve it by id with "
                "--existing (API: \"existing\": true) if this is that host, reinstalled")
    if others and selection.bulk:
        return (f"{others + 1} requests for host {request_.host!r} are pending (one may be an impostor): "
                "approve the right one by its id")
    return None


def decide(engine: Engine, selection: Selection, *, approve: bool, actor: str, reason: str, now: datetime,
           allow_existing: bool = False) -> Decision:
    """Approve or deny the selected requests (pending ones; denial also takes back an approval not yet
    collected). Approving one request by id denies the other pending requests for its host."""
    selection.check()
    if not reason.strip() or len(reason) > MAX_REASON_CHARS or "\x00" in reason:
        raise BadRequestError(f"reason: say why in 1 to {MAX_REASON_CHARS} characters, no NUL (it is stored "
                              "with the decision)")
    if allow_existing and selection.bulk:
        raise BadRequestError("existing: only with request ids (a pattern or group never takes over a host)")
    states = (EnrolState.PENDING,) if approve else (EnrolState.PENDING, EnrolState.APPROVED)
    decided: list[Enrolment] = []
    skipped: list[tuple[Enrolment, str]] = []
    with db.write(engine) as conn:
        _serialize(conn)
        for item in _selected(conn, selection, states):
            if approve:
                others = _pending_count(conn, enrolments.c.host == item.host, enrolments.c.id != item.id)
                problem = _approval_problem(item, selection, allow_existing, others)
                if problem is not None:
                    skipped.append((item, problem))
                    continue
                if others:
                    _set(conn, update(enrolments).where(
                        enrolments.c.host == item.host, enrolments.c.id != item.id,
                        enrolments.c.state == EnrolState.PENDING.value), EnrolState.DENIED, actor,
                        f"request {item.id} for this host was approved instead", now)
            state = EnrolState.APPROVED if approve else EnrolState.DENIED
            _set(conn, update(enrolments).where(enrolments.c.id == item.id), state, actor, reason, now)
            row = conn.execute(select(enrolments).where(enrolments.c.id == item.id)).one()
            decided.append(_row(conn, row))
    for item in decided:
        log.info("enrolment %s: id=%s host=%s by=%s reason=%r", item.state.value, item.id, item.host, actor,
                 reason)
    return Decision(tuple(decided), tuple(skipped))


def _set(conn: Connection, statement: Any, state: EnrolState, actor: str, reason: str, now: datetime) -> None:
    conn.execute(statement.values(state=state.value, decided_at=now, decided_by=actor[:255], reason=reason))
