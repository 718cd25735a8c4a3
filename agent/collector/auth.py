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
    if principal.kind not in (TokenKind.READER, TokenKind.REVIEWER):
        raise ForbiddenError(
            "an ingest token cannot read; create one with `gitops-collector token create --reader NAME`")
    return principal


def proxy_user(conn: HTTPConnection, proxy: ProxyAuth | None) -> str | None:
    """The trusted proxy's user name on this request, when the proxy is configured and is the peer."""
    if proxy is None or conn.client is None or conn.client.host not in proxy.proxies:
        return None
    return conn.headers.get(proxy.header, "").strip() or None


def may_review(principal: Principal, via_proxy: bool, reviewers: tuple[str, ...]) -> bool:
    """A reviewer token, or a trusted-proxy user named in `serve --reviewer` (docs/drift-review.md)."""
    return principal.kind is TokenKind.REVIEWER or (via_proxy and principal.name in reviewers)


REVIEW_REFUSED = ("reviewing drift needs a reviewer: a token from `gitops-collector token create --reviewer "
                  "NAME`, or a proxy user named with `serve --reviewer NAME`; readers can only read")


def reviewer_principal(engine: Engine, conn: HTTPConnection, proxy: ProxyAuth | None,
                       reviewers: tuple[str, ...]) -> Principal:
    """Who may act on drift over the API: 401 without credentials, 403 for a reader or ingest token."""
    principal = reader_principal(engine, conn, proxy)
    if not may_review(principal, proxy_user(conn, proxy) is not None, reviewers):
        raise ForbiddenError(REVIEW_REFUSED)
    return principal


def check_client_cert(conn: HTTPConnection, host: str) -> None:
    """With client certificates required: the report's host must be the one the certificate names."""
    name = conn.scope.get("state", {}).get(CLIENT_CERT_HOST)
    if name is None:
        raise ForbiddenError("a client certificate naming this host is required")
    if name != host:
        raise ForbiddenError(f"the client certificate is for host {name!r}, not {host!r}")
