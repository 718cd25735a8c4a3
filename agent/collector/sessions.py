"""Web UI sessions, kept in the database so that every collector process sharing it agrees.

Signing in with a reader token makes a session: a random secret goes to the browser as the cookie, and
the database keeps its SHA-256, the token it was made with and its expiry. A session ends when:
- its reader logs out (the row is deleted: a copy of the cookie is worthless from then on);
- it expires (`SESSION_MAX_AGE_S` after sign-in; the cookie has the same lifetime);
- its reader token is revoked (`gitops-collector token revoke`): a session counts only while its
  token is unrevoked, checked on every request.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import Engine, bindparam, delete, select

from agent.collector import db
from agent.collector.tables import UTCDateTime, sessions, tokens
from agent.collector.tokens import Principal, TokenKind, hash_token

SESSION_MAX_AGE_S = 12 * 3600

_READER_TOKEN = select(tokens.c.id).where(
    tokens.c.token_hash == bindparam("key_hash"),
    tokens.c.kind.in_([TokenKind.READER.value, TokenKind.REVIEWER.value]),
    tokens.c.revoked_at.is_(None))
_SESSION = (select(tokens.c.kind, tokens.c.name)
            .select_from(sessions.join(tokens, tokens.c.id == sessions.c.token_id))
            .where(sessions.c.session_hash == bindparam("key_hash"), tokens.c.revoked_at.is_(None),
                   sessions.c.expires_at > bindparam("key_now", type_=UTCDateTime())))


def start(engine: Engine, reader_token: str, *, now: datetime) -> str | None:
    """A new session for a valid reader token: the cookie's secret (shown to the browser only); None when
    the token is not an unrevoked reader token. Expired sessions are cleared on the way."""
    with db.write(engine) as conn:
        token_id = conn.execute(_READER_TOKEN, {"key_hash": hash_token(reader_token)}).scalar()
        if token_id is None:
            return None
        conn.execute(delete(sessions).where(sessions.c.expires_at <= now))
        secret = secrets.token_urlsafe(32)
        expires_at = now + timedelta(seconds=SESSION_MAX_AGE_S)
        conn.execute(sessions.insert().values(session_hash=hash_token(secret), token_id=token_id,
                                              created_at=now, expires_at=expires_at))
    return secret


def reader(engine: Engine, secret: str, *, now: datetime) -> Principal | None:
    """The reader of a live session (not ended, not expired, token not revoked), else None."""
    with engine.connect() as conn:
        row = conn.execute(_SESSION, {"key_hash": hash_token(secret), "key_now": now}).first()
    return None if row is None else Principal(TokenKind(row.kind), row.name)


def end(engine: Engine, secret: str) -> None:
    """Log out: the session is gone for every collector process, whoever holds a copy of the cookie."""
    with db.write(engine) as conn:
        conn.execute(delete(sessions).where(sessions.c.session_hash == hash_token(secret)))
