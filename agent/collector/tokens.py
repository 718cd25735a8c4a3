"""API tokens. An ingest token is bound to one host; a reader token reads the query API and UI.

A token is shown once when created; the database keeps only its SHA-256 (tokens are 256 random bits,
so a fast hash is enough) and a short prefix so people can tell tokens apart in `token list`.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, bindparam, or_, select, update

from agent.collector import db
from agent.collector.digits import whole_number
from agent.collector.errors import BadRequestError, NotFoundError
from agent.collector.hostnames import host_name_problem
from agent.collector.tables import tokens

log = logging.getLogger(__name__)

TOKEN_PREFIX = "gco_"  # noqa: S105 (a label, not a secret)


class TokenKind(enum.StrEnum):
    INGEST = "ingest"
    READER = "reader"
    REVIEWER = "reviewer"  # reads, and acts on drift (acknowledge, accept): docs/drift-review.md
    ENROL = "enrol"  # a site enrolment secret: asks for enrolment only (agent.collector.enrolment)


@dataclass(frozen=True)
class Principal:
    """Who made a request: an ingest token's host, or a reader (token or trusted proxy header)."""

    kind: TokenKind
    name: str


@dataclass(frozen=True)
class TokenInfo:
    id: int
    kind: str  # a TokenKind's value, or a kind unknown here (a newer collector sharing the database)
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def mint() -> tuple[str, str]:
    """A new token secret and its prefix (shown in `token list`)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return secret, secret[: len(TOKEN_PREFIX) + 6]


def create(engine: Engine, kind: TokenKind, name: str, *, now: datetime) -> tuple[TokenInfo, str]:
    """Store a new token for `name` (a host for ingest tokens); returns it and the secret, once."""
    if not name.strip() or len(name) > 255 or "\x00" in name:
        raise BadRequestError(f"token name {name[:40]!r}: give 1 to 255 characters")
    problem = host_name_problem(name) if kind is TokenKind.INGEST else None
    if problem is not None:
        raise BadRequestError(f"host name: {problem}")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    prefix = secret[: len(TOKEN_PREFIX) + 6]
    with db.write(engine) as conn:
        result = conn.execute(tokens.insert().values(
            kind=kind.value, name=name, token_hash=hash_token(secret), prefix=prefix, created_at=now,
        ))
        (token_id,) = result.inserted_primary_key or (0,)
    return TokenInfo(int(token_id), kind, name, prefix, now, None), secret


def create_many(engine: Engine, hosts: list[str], *, now: datetime) -> list[tuple[TokenInfo, str]]:
    """Ingest tokens for many hosts in one transaction (`token create --hosts-from FILE`): every name is
    checked first (BadRequestError naming the first bad one); nothing is stored unless all are."""
    made: list[tuple[TokenInfo, str]] = []
    rows = []
    for name in hosts:
        problem = host_name_problem(name)
        if problem is not None:
            raise BadRequestError(f"host name {name[:80]!r}: {problem}")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        prefix = secret[: len(TOKEN_PREFIX) + 6]
        rows.append({"kind": TokenKind.INGEST.value, "name": name, "token_hash": hash_token(secret),
                     "prefix": prefix, "created_at": now})
        made.append((TokenInfo(0, TokenKind.INGEST, name, prefix, now, None), secret))
    if rows:
        with db.write(engine) as conn:
            conn.execute(tokens.insert(), rows)
    return made


AUTHENTICATE = select(tokens.c.kind, tokens.c.name).where(
    tokens.c.token_hash == bindparam("key_hash"), tokens.c.revoked_at.is_(None))


PRINCIPALS_OF = select(tokens.c.token_hash, tokens.c.kind, tokens.c.name).where(
    tokens.c.token_hash.in_(bindparam("hashes", expanding=True)), tokens.c.revoked_at.is_(None))
PRINCIPALS_PER_STATEMENT = 500  # hashes a statement asks for (SQLite binds up to 32,766 parameters)


_KINDS = {kind.value: kind for kind in TokenKind}


def principal_of(kind: str, name: str) -> Principal | None:
    """The principal of a stored token's kind and name; None, with a warning, for a kind this collector
    does not know (written by a newer collector sharing the database): such a token grants nothing here,
    and asking for it fails no other request."""
    known = _KINDS.get(kind)
    if known is None:
        log.warning("a token of %r has kind %r, unknown to this collector: refused", name, kind)
        return None
    return Principal(known, name)


def authenticate(engine: Engine, secret: str) -> Principal | None:
    """The principal of a valid, unrevoked token, else None."""
    with engine.connect() as conn:
        row = conn.execute(AUTHENTICATE, {"key_hash": hash_token(secret)}).first()
    return None if row is None else principal_of(row.kind, row.name)


def principals_of(engine: Engine, hashes: Sequence[str]) -> dict[str, Principal]:
    """{token hash (`hash_token`): principal} for those of `hashes` that are valid, unrevoked tokens of a
    kind this collector knows (`principal_of`); the others are absent. One read transaction, a statement
    per PRINCIPALS_PER_STATEMENT hashes."""
    found: dict[str, Principal] = {}
    with engine.connect() as conn:
        for start in range(0, len(hashes), PRINCIPALS_PER_STATEMENT):
            chunk = list(hashes[start:start + PRINCIPALS_PER_STATEMENT])
            for key_hash, kind, name in conn.execute(PRINCIPALS_OF, {"hashes": chunk}):
                principal = principal_of(kind, name)
                if principal is not None:
                    found[key_hash] = principal
    return found


def list_all(engine: Engine) -> list[TokenInfo]:
    """Every token as stored, its kind as written (`token list` shows one of a kind unknown here too, so that
    an operator can see and revoke it)."""
    with engine.connect() as conn:
        rows = conn.execute(select(tokens).order_by(tokens.c.id)).all()
    return [TokenInfo(r.id, r.kind, r.name, r.prefix, r.created_at, r.revoked_at) for r in rows]


def revoke(engine: Engine, ref: str, *, now: datetime) -> int:
    """Revoke by id, by prefix, or every token of a name (host or reader). Returns how many."""
    match = or_(tokens.c.prefix == ref, tokens.c.name == ref)
    token_id = whole_number(ref)
    if token_id is not None:
        match = or_(match, tokens.c.id == token_id)
    with db.write(engine) as conn:
        count = conn.execute(
            update(tokens).where(match, tokens.c.revoked_at.is_(None)).values(revoked_at=now)).rowcount
    if not count:
        raise NotFoundError(f"no active token matches {ref!r} (give an id, a prefix, or a name)")
    return count
