"""Who is asking: ingest tokens (bound to a host), reader tokens, or a trusted reverse-proxy header.

The proxy header is off by default. When configured, it is honoured only on connections from the
listed proxy addresses, and only for reading: ingest always needs the host's own token. The address is
the socket's peer: `serve` runs uvicorn with proxy_headers off, so no X-Forwarded-For can stand in for it
(tests/collector/test_proxy.py puts a real nginx in front).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from starlette.requests import HTTPConnection

from agent.collector import tokens
from agent.collector.errors import ForbiddenError, UnauthorizedError
from agent.collector.tokens import Principal, TokenKind

# Request-state key under which the TLS layer (agent.collector.tls) leaves the client certificate's name.
CLIENT_CERT_HOST = "gitops_client_cert_host"


@dataclass(frozen=True)
class ProxyAuth:
    """Trust `header` (e.g. X-Forwarded-User) as a reader's name on requests from `proxies`."""

    header: str
    proxies: tuple[str, ...] = ("127.0.0.1", "::1")


def bearer(conn: HTTPConnection) -> str | None:
    value = conn.headers.get("authorization", "")
    scheme, _, secret = value.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return secret.strip()


def _token_principal(engine: Engine, conn: HTTPConnection) -> Principal:
    secret = bearer(conn)
    if secret is None:
        raise UnauthorizedError("missing bearer token (Authorization: Bearer TOKEN)")
    principal = tokens.authenticate(engine, secret)
    if principal is None:
        raise UnauthorizedError("unknown or revoked token")
    return principal


def ingest_principal(engine: Engine, conn: HTTPConnection) -> Principal:
    """The host an ingest token is bound to; 401 without a valid token, 403 for a reader token."""
    principal = _token_principal(engine, conn)
    if principal.kind is not TokenKind.INGEST:
        raise ForbiddenError("a reader token cannot send reports; use the host's ingest token")
    return principal


def reader_principal(engine: Engine, conn: HTTPConnection, proxy: ProxyAuth | None) -> Principal:
    """A reader: the trusted proxy header (when configured and the connection's peer is a listed proxy),
    or a reader token."""
    if proxy is not None and conn.client is not None and conn.client.host in proxy.proxies:
        name = conn.headers.get(proxy.header, "").strip()
        if name:
            return Principal(TokenKind.READER, name)
    principal = _token_principal(engine, conn)
    if principal.kind is not TokenKind.READER:
        raise ForbiddenError(
            "an ingest token cannot read; create one with `gitops-collector token create --reader NAME`")
    return principal


def check_client_cert(conn: HTTPConnection, host: str) -> None:
    """With client certificates required: the report's host must be the one the certificate names."""
    name = conn.scope.get("state", {}).get(CLIENT_CERT_HOST)
    if name is None:
        raise ForbiddenError("a client certificate naming this host is required")
    if name != host:
        raise ForbiddenError(f"the client certificate is for host {name!r}, not {host!r}")
