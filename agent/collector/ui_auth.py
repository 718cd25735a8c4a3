"""Who reads the web UI: a session cookie set by the login form, a bearer reader token, or the trusted
proxy header (as in the API). The login form accepts reader tokens from the token store.

The session cookie carries the reader token itself (HttpOnly, SameSite=Strict, Secure under TLS), so a
revoked token ends its sessions at once and several collector processes need no shared secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from agent.collector import tokens
from agent.collector.auth import reader_principal
from agent.collector.errors import UnauthorizedError
from agent.collector.tokens import Principal, TokenKind
from agent.collector.ui_render import SECURITY_HEADERS, page

if TYPE_CHECKING:
    from agent.collector.app import Collector

COOKIE = "gitops_session"
SESSION_MAX_AGE_S = 12 * 3600
MAX_FORM_BYTES = 8192
LOGIN_REFUSED = ("Not a valid reader token "
                 "(create one with `gitops-collector token create --reader NAME`).")


def _session_principal(collector: Collector, request: Request) -> Principal | None:
    secret = request.cookies.get(COOKIE)
    if not secret:
        return None
    principal = tokens.authenticate(collector.engine, secret)
    return principal if principal is not None and principal.kind is TokenKind.READER else None


def page_reader(collector: Collector, request: Request) -> Principal | None:
    """The reader of a page, or None (the page then redirects to the login form). Blocking: run in a
    database thread."""
    principal = _session_principal(collector, request)
    if principal is not None:
        return principal
    try:
        return reader_principal(collector.engine, request, collector.settings.proxy)
    except UnauthorizedError:
        return None


def login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303,
                            headers=SECURITY_HEADERS)


def safe_next(value: str | None) -> str:
    """Only a local path may follow the login (no open redirect to another site)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    return value


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    parts = urlsplit(origin)
    return parts.netloc == request.url.netloc and parts.scheme == request.url.scheme


async def login_form(request: Request) -> Response:
    return page("login.html", next=safe_next(request.query_params.get("next")), error=None)


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            break
    fields = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace"))
    return {k: v[0] for k, v in fields.items() if v}


async def login_submit(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    form = await _form(request)
    target = safe_next(form.get("next"))
    if not _same_origin(request):
        return page("login.html", 403, next=target, error="This form must be sent from this site.")
    secret = form.get("token", "").strip()
    principal = await collector.db(tokens.authenticate, collector.engine, secret) if secret else None
    if principal is None or principal.kind is not TokenKind.READER:
        return page("login.html", 401, next=target, error=LOGIN_REFUSED)
    response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(COOKIE, secret, max_age=SESSION_MAX_AGE_S, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    if not _same_origin(request):
        return page("login.html", 403, next="/", error="This form must be sent from this site.")
    response = RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response
