"""Who reads the web UI: a session made by the login form, a bearer reader token, or the trusted proxy
header (as in the API).

Sessions live in the database (`sessions`): the cookie holds a random session secret, never the token.
Logout deletes the session, so a copied cookie stops working at once in every collector process sharing
the database; revoking the reader token ends all of its sessions the same way.

Every form POST (login, logout) must come from the collector's own pages: its Origin header, or when a
browser sends none its Referer, must name this collector's origin (the one the request reached, or one
given with `serve --public-url`, e.g. the HTTPS name of a proxy in front). Neither header: refused.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from agent.collector import sessions
from agent.collector.auth import Role, bearer, has_role, proxy_user, reader_principal, require
from agent.collector.bodies import read_body
from agent.collector.errors import (
    CollectorError,
    InvalidActionError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from agent.collector.tokens import Principal
from agent.collector.ui_render import SECURITY_HEADERS, render_page

if TYPE_CHECKING:
    from agent.collector.context import Collector

COOKIE = "gitops_session"
SESSION_MAX_AGE_S = sessions.SESSION_MAX_AGE_S
MAX_FORM_BYTES = 8192
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
LOGIN_FIELDS = frozenset({"token", "next"})
LOGIN_REFUSED = ("Not a valid reader token "
                 "(create one with `gitops-collector token create --reader NAME`).")
CROSS_SITE = "This form must be sent from this site's own pages (the Origin or Referer header names another)."
DEFAULT_PORTS = {"http": 80, "https": 443}


def _session_principal(collector: Collector, request: Request) -> Principal | None:
    secret = request.cookies.get(COOKIE)
    if not secret:
        return None
    return sessions.reader(collector.engine, secret, now=collector.now())


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


def csrf_expected(request: Request) -> str | None:
    """The synchroniser token a state-changing form must carry: derived from the session cookie (or the
    bearer token) the page was read with, so another site cannot know it. None for a trusted-proxy user
    (no secret of theirs reaches the collector): the Origin check (`from_this_site`) alone guards them."""
    secret = request.cookies.get(COOKIE) or bearer(request)
    if not secret:
        return None
    return hashlib.sha256(b"gitops-collector csrf\0" + secret.encode("utf-8")).hexdigest()


def csrf_ok(request: Request, sent: str | None) -> bool:
    expected = csrf_expected(request)
    return expected is None or hmac.compare_digest((sent or "").encode("utf-8"), expected.encode("utf-8"))


async def read_form(request: Request, *, repeatable: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """A form's fields, each with its values in order (blank values left out, as absent). Refused with a
    one-line error, rather than read in part: a body over MAX_FORM_BYTES (TooLargeError: cut short, a
    reason would be stored cut and the fields after it dropped), text that is not UTF-8
    (InvalidActionError), a field given twice unless it is in `repeatable` (which value was meant?), a body
    that is not `application/x-www-form-urlencoded` (UnsupportedMediaTypeError, 415: what an HTML form
    sends by default; a multipart body would otherwise be misread as one odd field)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != FORM_MEDIA_TYPE:
        raise UnsupportedMediaTypeError(f"form: Content-Type must be {FORM_MEDIA_TYPE}, "
                                        f"got {media_type[:60] or 'none'!r}")
    raw = await read_body(request, MAX_FORM_BYTES)
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise InvalidActionError("form: not UTF-8") from None
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        if name in fields and name not in repeatable:
            raise InvalidActionError(f"{name[:40]}: given more than once")
        fields.setdefault(name, []).append(value)
    return {name: kept for name, values in fields.items() if (kept := [v for v in values if v])}


def form_token(request: Request) -> str:
    """The CSRF token an operator's or reviewer's forms carry (csrf_expected; "proxy" for a trusted-proxy
    user, whom the Origin check alone guards)."""
    return csrf_expected(request) or "proxy"


def _via_proxy(collector: Collector, request: Request, principal: Principal) -> bool:
    """Whether the page's reader is the trusted proxy's user (no session cookie, no bearer token)."""
    return (not request.cookies.get(COOKIE) and bearer(request) is None
            and proxy_user(request, collector.settings.proxy) == principal.name)


def has_page_role(collector: Collector, request: Request, principal: Principal, role: Role) -> bool:
    """Whether the page's reader is a `role` (auth.has_role): whether the page shows that role's forms."""
    return has_role(role, principal, via_proxy=_via_proxy(collector, request, principal),
                    reviewers=collector.settings.reviewers, operators=collector.settings.operators)


def require_form(collector: Collector, request: Request, principal: Principal | None,
                 action: str) -> Principal:
    """The form's signed-in reader when they may do `action` (auth.PRIVILEGES); ForbiddenError otherwise."""
    via_proxy = principal is not None and _via_proxy(collector, request, principal)
    return require(action, principal, via_proxy=via_proxy, reviewers=collector.settings.reviewers,
                   operators=collector.settings.operators)


def review_token(collector: Collector, request: Request, principal: Principal) -> str | None:
    """The CSRF token to put in the page's review forms when its reader may review drift, else None
    (readers get no forms). A trusted-proxy reviewer gets "proxy" (guarded by the Origin check)."""
    if not has_page_role(collector, request, principal, Role.REVIEWER):
        return None
    return form_token(request)


def login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303,
                            headers=SECURITY_HEADERS)


def safe_next(value: str | None) -> str:
    """Only a local path may follow the login (no open redirect to another site)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    return value


def origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an absolute http(s) URL, default ports filled in; None for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host, port or DEFAULT_PORTS[scheme]


def from_this_site(request: Request, public_urls: tuple[str, ...]) -> bool:
    """True when the form was posted from this collector's pages: Origin (or, only when a browser sends
    no Origin, Referer) names the origin the request reached or one of `public_urls`."""
    sender = request.headers.get("origin")
    if sender is None:
        sender = request.headers.get("referer")
    if not sender or sender == "null":
        return False
    allowed = {origin_of(str(request.url)), *(origin_of(url) for url in public_urls)} - {None}
    return origin_of(sender) in allowed


def secure_cookie(request: Request, public_urls: tuple[str, ...]) -> bool:
    """Mark the cookie Secure when served over TLS, or when the public URL (a TLS proxy) is https."""
    return request.url.scheme == "https" or any(u.lower().startswith("https:") for u in public_urls)


async def login_form(request: Request) -> Response:
    return render_page("login.html", next=safe_next(request.query_params.get("next")), error=None)


async def login_submit(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    public_urls = collector.settings.public_urls
    try:
        form = {name: values[0] for name, values in (await read_form(request)).items()}
        unknown = sorted(set(form) - LOGIN_FIELDS)
        if unknown:  # as every other form: a misspelt or foreign field is named, not ignored
            raise InvalidActionError(f"{unknown[0][:40]!r}: not a field of this form (it takes next, token)")
    except CollectorError as e:
        return render_page("login.html", e.status, next="/", error=str(e))
    target = safe_next(form.get("next"))
    if not from_this_site(request, public_urls):
        return render_page("login.html", 403, next=target, error=CROSS_SITE)
    token = form.get("token", "").strip()
    secret = None
    if token:
        secret = await collector.db(sessions.start, collector.engine, token, now=collector.now())
    if secret is None:
        return render_page("login.html", 401, next=target, error=LOGIN_REFUSED)
    response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(COOKIE, secret, max_age=SESSION_MAX_AGE_S, path="/", httponly=True,
                        samesite="strict", secure=secure_cookie(request, public_urls))
    return response


async def logout(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    public_urls = collector.settings.public_urls
    if not from_this_site(request, public_urls):
        return render_page("login.html", 403, next="/", error=CROSS_SITE)
    secret = request.cookies.get(COOKIE)
    if secret:
        await collector.db(sessions.end, collector.engine, secret)
    response = RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                           secure=secure_cookie(request, public_urls))
    return response
