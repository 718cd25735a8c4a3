"""Who is asking: ingest tokens (bound to a host), reader tokens, or a trusted reverse-proxy header.

The proxy header is off by default. When configured, it is honoured only on connections from the
listed proxy addresses, and only for reading: ingest always needs the host's own token. The address is
the socket's peer: `serve` runs uvicorn with proxy_headers off, so no X-Forwarded-For can stand in for it
(tests/collector/test_proxy.py puts a real nginx in front).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

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


# -- who may do which action: the one table ---------------------------------------------------------


class Role(Enum):
    """Who may change state through the collector's API and UI (beyond hosts' own ingest and enrolment)."""

    REVIEWER = "reviewer"  # a reviewer token, or a trusted-proxy user named with `serve --reviewer`
    OPERATOR = "operator"  # a reader (token name or trusted-proxy user) named with `serve --operator`


@dataclass(frozen=True)
class Privilege:
    """One state-changing action, the role it needs, and every route that does it ("METHOD /path" as the
    app's routes spell it; the API's and the UI form's)."""

    role: Role
    routes: tuple[str, ...]
    what: str  # for the refusal: "<what> needs a reviewer/operator"


# Every state-changing action of a reader-side identity, and who may do it. Checked by `require` in every
# handler that acts; tests/collector/test_privileges.py walks every state-changing route of the app
# against this table (and OTHER_STATE_CHANGES), so a new action cannot be allowed on one path and refused
# on another. docs/collector.md "Who may do what".
PRIVILEGES: dict[str, Privilege] = {
    "drift.ack": Privilege(Role.REVIEWER, ("POST /api/v1/drift/items/{item_id}/{action}",
                                           "POST /drift/items/{item_id}/{action}"), "acknowledging drift"),
    "drift.unack": Privilege(Role.REVIEWER, ("POST /api/v1/drift/items/{item_id}/{action}",
                                             "POST /drift/items/{item_id}/{action}"), "reopening drift"),
    "drift.accept": Privilege(Role.REVIEWER, ("POST /api/v1/drift/exceptions", "POST /drift/exceptions"),
                              "accepting drift (an exception)"),
    "drift.revoke": Privilege(Role.REVIEWER, ("POST /api/v1/drift/exceptions/{exc_id}/revoke",
                                              "POST /drift/exceptions/{exc_id}/revoke"),
                              "revoking an exception"),
    "rollout.act": Privilege(Role.OPERATOR, ("POST /api/v1/rollouts/{commit}/actions",
                                             "POST /commits/{sha}/rollout"),
                             "halting, resuming or skipping a wave of a rollout"),
    "rollout.approve": Privilege(Role.OPERATOR, ("POST /api/v1/rollouts/{commit}/approvals",
                                                 "POST /commits/{sha}/rollout"), "approving a rollout plan"),
    "enrolment.approve": Privilege(Role.OPERATOR, ("POST /api/v1/enrolments/approve",),
                                   "approving enrolments"),
    "enrolment.deny": Privilege(Role.OPERATOR, ("POST /api/v1/enrolments/deny",), "denying enrolments"),
}
# The state-changing routes that no reader-side identity uses, and what authenticates each instead.
# (Tokens are created and revoked by `gitops-collector token`, on the database, not over HTTP.)
OTHER_STATE_CHANGES: dict[str, str] = {
    "POST /api/v1/reports": "a host's ingest token",
    "PUT /api/v1/rollouts/{commit}/policy": "a host's ingest token",
    "POST /api/v1/enrolments": "a site enrolment secret or the host's client certificate",
    "POST /api/v1/enrolments/{id}/pickup": "the request's pickup secret",
    "POST /api/v1/hooks/{vendor}": "the forge's webhook secret",
    "POST /login": "the token being signed in with",
    "POST /logout": "the session being ended",
}


def may_review(principal: Principal, via_proxy: bool, reviewers: tuple[str, ...]) -> bool:
    """A reviewer token, or a trusted-proxy user named in `serve --reviewer` (docs/drift-review.md)."""
    return principal.kind is TokenKind.REVIEWER or (via_proxy and principal.name in reviewers)


def has_role(role: Role, principal: Principal, *, via_proxy: bool, reviewers: tuple[str, ...],
             operators: tuple[str, ...]) -> bool:
    """Whether `principal` (a reader-side identity; `via_proxy`: named by the trusted proxy's header) is
    a `role`: the `serve --reviewer` and `serve --operator` lists."""
    if role is Role.REVIEWER:
        return may_review(principal, via_proxy, reviewers)
    return principal.name in operators


def may(action: str, principal: Principal, *, via_proxy: bool, reviewers: tuple[str, ...],
        operators: tuple[str, ...]) -> bool:
    """Whether `principal` may do `action` (a key of PRIVILEGES; KeyError for any other)."""
    return has_role(PRIVILEGES[action].role, principal, via_proxy=via_proxy, reviewers=reviewers,
                    operators=operators)


REVIEW_REFUSED = ("reviewing drift needs a reviewer: a token from `gitops-collector token create --reviewer "
                  "NAME`, or a proxy user named with `serve --reviewer NAME`; readers can only read")


def refusal(action: str, principal: Principal | None) -> str:
    """The one-line 403 for `principal` (None: not signed in) doing `action`."""
    privilege = PRIVILEGES[action]
    if privilege.role is Role.REVIEWER:
        return REVIEW_REFUSED
    who = f"{principal.name!r} is not an operator" if principal is not None else "not signed in"
    return f"{who}: {privilege.what} needs a reader named with `serve --operator NAME`"


def require(action: str, principal: Principal | None, *, via_proxy: bool, reviewers: tuple[str, ...],
            operators: tuple[str, ...]) -> Principal:
    """`principal` when it may do `action` (PRIVILEGES); ForbiddenError naming who may, otherwise."""
    if principal is None or not may(action, principal, via_proxy=via_proxy, reviewers=reviewers,
                                    operators=operators):
        raise ForbiddenError(refusal(action, principal))
    return principal


def acting_principal(engine: Engine, conn: HTTPConnection, proxy: ProxyAuth | None, action: str, *,
                     reviewers: tuple[str, ...], operators: tuple[str, ...]) -> Principal:
    """Who does `action` over the API (bearer token or trusted proxy): 401 without credentials, 403 for
    an ingest token or for a reader the table (PRIVILEGES) does not allow."""
    principal = reader_principal(engine, conn, proxy)
    return require(action, principal, via_proxy=proxy_user(conn, proxy) is not None, reviewers=reviewers,
                   operators=operators)


def check_client_cert(conn: HTTPConnection, host: str) -> None:
    """With client certificates required: the report's host must be the one the certificate names."""
    name = conn.scope.get("state", {}).get(CLIENT_CERT_HOST)
    if name is None:
        raise ForbiddenError("a client certificate naming this host is required")
    if name != host:
        raise ForbiddenError(f"the client certificate is for host {name!r}, not {host!r}")
