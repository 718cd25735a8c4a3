"""Review actions on drift, in the API and the web UI: acknowledge, accept (exceptions), revoke, audit log.

Acting needs a reviewer (auth.PRIVILEGES, the collector's one table of who may do what: a reviewer
token, or a trusted-proxy user named with `serve --reviewer`); readers only read. API calls carry a
bearer token (no cookie, so no CSRF). UI forms post with the session cookie and must pass both CSRF
checks: the Origin/Referer check the login form uses (ui_auth.from_this_site) and the page's synchroniser
token (ui_auth.csrf_expected). Rules and refusals: docs/drift-review.md sections 4 and 6.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from agent.collector import drift_exceptions as dx
from agent.collector import params, review_store, ui_auth
from agent.collector.auth import REVIEW_REFUSED, acting_principal, reader_principal
from agent.collector.bodies import read_json_object
from agent.collector.drift_review import ItemKey, ReviewItem
from agent.collector.errors import (
    BadRequestError,
    CollectorError,
    ForbiddenError,
    InvalidActionError,
    NotFoundError,
)
from agent.collector.evidence import without_zone
from agent.collector.queries import Listing
from agent.collector.review_store import Actor
from agent.collector.ui import common, page_params, ui_page
from agent.collector.ui_render import SECURITY_HEADERS, render_page
from agent.report import format_time, parse_time

if TYPE_CHECKING:
    from agent.collector.context import Collector

MAX_JSON_BYTES = 64 * 1024
APPLY_NOTE = ("An exception changes what counts (compliance with exceptions) and what alerts. It never "
              "changes what hosts apply: Git decides that.")
AUDIT_BATCH = 1000
AUDIT_FIELDS = ("id", "at", "actor", "actor_kind", "action", "target", "reason", "details")
# The fields a JSON body may hold: any other is refused, so that a misspelt `host_patern` cannot widen an
# exception to every host, nor a misspelt `reason` go unnoticed.
REASON_FIELDS = frozenset({"reason"})
EXCEPTION_FIELDS = frozenset({"scope", "item_id", "same_loop_item", "role", "role_kind", "host_pattern",
                              "host_group", "owner", "reason", "ticket", "expires_at"})
# The UI's forms take the same fields, with the page's CSRF token (and, on ack, the page to go back to).
ACK_FORM_FIELDS = frozenset({"csrf", "next"}) | REASON_FIELDS
REVOKE_FORM_FIELDS = frozenset({"csrf"}) | REASON_FIELDS
EXCEPTION_FORM_FIELDS = frozenset({"csrf"}) | EXCEPTION_FIELDS


def _collector(request: Request) -> Collector:
    collector: Collector = request.app.state.collector
    return collector


def _text(fields: dict[str, Any], name: str) -> str | None:
    """A text field: absent, null or "" is None; anything but a string, or one holding a NUL (SQLite
    would store it, PostgreSQL refuses it), is refused naming the field."""
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidActionError(f"{name}: expected a string")
    if "\x00" in value:
        raise InvalidActionError(f"{name}: must not contain a NUL character")
    return value


def _selector(fields: dict[str, Any], name: str) -> str | None:
    """A host selector's field: absent or null is none (every host), a string is the selector; an empty or
    blank string is refused: "" from an unset shell variable (`--host-pattern "$HOSTS"`) must not turn an
    exception for some hosts into one for every host. (A form's blank field never gets here: a form
    leaves blank fields out, and its page says "neither: every host".)"""
    value = _text(fields, name)
    if value is None and name in fields and fields[name] is not None:
        raise InvalidActionError(f"{name}: empty; leave it out for every host")
    if value is not None and not value.strip():
        raise InvalidActionError(f"{name}: {value[:20]!r} is blank; leave it out for every host")
    return value


def _int(value: str, name: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        raise BadRequestError(f"{name}: expected a whole number")
    return int(value)


def _flag(fields: dict[str, Any], name: str) -> bool:
    """A yes/no field: JSON true/false, or a form's checkbox ("on", "true", "1"; absent or "" is no).
    Anything else is refused: read as "no", `same_loop_item: "yes"` would widen an exception to every
    loop item."""
    value = fields.get(name)
    if type(value) is bool:
        return value
    if value is None or (type(value) is str and value in ("", "false", "0")):
        return False
    if type(value) is str and value in ("true", "on", "1"):
        return True  # (compared as strings only: JSON 1 or 1.0 == True in Python, and 0 == False)
    raise InvalidActionError(f"{name}: expected true or false")


def parse_expiry(value: str | None) -> datetime:
    """`2027-03-01` (the end of that UTC day is not meant: the exception ends at its start, 00:00 UTC) or
    an RFC 3339 time. InvalidActionError naming `expires_at` otherwise."""
    if not value:
        raise InvalidActionError("expires_at: required for an exception (a date or an RFC 3339 time)")
    try:
        if len(value) == 10:
            return datetime.combine(datetime.strptime(value, "%Y-%m-%d").date(), time(), tzinfo=UTC)
        return parse_time(value)
    except ValueError as e:
        if without_zone(value):
            raise InvalidActionError(f"expires_at: {value[:40]!r} has no time zone: add Z for UTC, or "
                                     "+HH:MM") from e
        raise InvalidActionError(f"expires_at: {value[:40]!r} is not a date (YYYY-MM-DD) or an RFC 3339 "
                                 "time") from e


def build_exception(fields: dict[str, Any], ref: ReviewItem | None) -> dx.DriftException:
    """An exception from the request's fields: `scope` item|task|role; item and task take their key or
    task from the item `item_id` (`ref`); role takes `role` (with `role_kind` ansible|playbook, default
    ansible); task and role take a host selector `host_pattern` or `host_group` (neither: every host; an
    empty one is refused, see _selector)."""
    try:
        scope = dx.ExceptionScope(_text(fields, "scope") or "item")
    except ValueError as e:
        raise InvalidActionError("scope: expected item, task or role") from e
    if scope in (dx.ExceptionScope.ITEM, dx.ExceptionScope.TASK) and ref is None:
        raise InvalidActionError(f"item_id: scope {scope.value} names the drift item it starts from")
    try:
        hosts = dx.HostSelector(pattern=_selector(fields, "host_pattern"),
                                group=_selector(fields, "host_group"))
    except ValueError as e:
        raise InvalidActionError(f"host_pattern/host_group: {e}") from e
    kind = _text(fields, "role_kind") or "ansible"
    try:
        role_kind = dx.RoleKind(kind)
    except ValueError:
        raise InvalidActionError(f"role_kind: {kind[:40]!r} is not ansible or playbook") from None
    key: ItemKey | None = ref.key if ref is not None and scope is dx.ExceptionScope.ITEM else None
    task = ref.key.task if ref is not None and scope is dx.ExceptionScope.TASK else None
    same_loop_item = _flag(fields, "same_loop_item")  # checked whatever the scope: "yes" is refused anyway
    loop_item = ref.key.item if task is not None and same_loop_item and ref is not None else None
    role = _text(fields, "role") if scope is dx.ExceptionScope.ROLE else None
    if scope is dx.ExceptionScope.ROLE and role is None:
        raise InvalidActionError("role: required for scope role")
    return dx.DriftException(
        id=0, scope=scope, owner=_text(fields, "owner") or "", reason=_text(fields, "reason") or "",
        ticket=_text(fields, "ticket") or "", created_at=datetime.min.replace(tzinfo=UTC),
        expires_at=parse_expiry(_text(fields, "expires_at")), key=key, task=task, item=loop_item,
        role=role, role_kind=role_kind, hosts=hosts)


def _load_ref(engine: Any, fields: dict[str, Any]) -> ReviewItem | None:
    raw = fields.get("item_id")
    if raw is None or raw == "":
        return None
    return review_store.load_item(engine, _int(str(raw), "item_id"))


def _exception_json(row: Any, now: datetime) -> dict[str, Any]:
    exc = review_store.exception_of(row)
    state = "revoked" if row.revoked_at is not None else ("active" if exc.active(now) else "expired")
    return {"id": row.id, "scope": row.scope, "scope_fields": json.loads(row.scope_fields),
            "host_pattern": row.host_pattern, "host_group": row.host_group, "owner": row.owner,
            "reason": row.reason, "ticket": row.ticket, "created_at": format_time(row.created_at),
            "created_by": row.created_by, "expires_at": format_time(row.expires_at),
            "revoked_at": format_time(row.revoked_at) if row.revoked_at else None,
            "revoked_by": row.revoked_by, "state": state}


# -- API ----------------------------------------------------------------------------------------------


async def _api_actor(request: Request, action: str) -> tuple[Collector, Actor]:
    """The collector and who does `action` (a key of auth.PRIVILEGES); 401/403 otherwise."""
    collector = _collector(request)
    settings = collector.settings
    principal = await collector.db(acting_principal, collector.engine, request, settings.proxy, action,
                                   reviewers=settings.reviewers, operators=settings.operators)
    kind = "token" if principal.kind.value == "reviewer" else "proxy"
    return collector, Actor(principal.name, kind)


async def _json_body(request: Request, allowed: frozenset[str] = REASON_FIELDS) -> dict[str, Any]:
    """The body's JSON object; InvalidActionError (422) naming the first field not in `allowed`."""
    fields = await read_json_object(request, MAX_JSON_BYTES, empty_is_object=True)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise InvalidActionError(f"{unknown[0][:40]!r}: not a field of this action (it takes "
                                 f"{', '.join(sorted(allowed))})")
    return fields


def _action(request: Request) -> str:
    action: str = request.path_params["action"]
    if action not in ("ack", "unack"):
        raise NotFoundError(f"no action {action[:20]!r} on drift items (ack, unack)")
    return action


async def api_ack(request: Request) -> Response:
    action = _action(request)
    collector, actor = await _api_actor(request, f"drift.{action}")
    item_id = _int(request.path_params["item_id"], "item id")
    fields = await _json_body(request)
    call = review_store.acknowledge if action == "ack" else review_store.unacknowledge_item
    await collector.db(call, collector.engine, item_id, actor=actor, reason=_text(fields, "reason"),
                       now=collector.now())
    item = await collector.db(review_store.item_json, collector.engine, item_id, now=collector.now())
    return JSONResponse(item)


async def api_create_exception(request: Request) -> Response:
    collector, actor = await _api_actor(request, "drift.accept")
    fields = await _json_body(request, EXCEPTION_FIELDS)
    ref = await collector.db(_load_ref, collector.engine, fields)
    exc = build_exception(fields, ref)
    exc_id = await collector.db(review_store.create_exception, collector.engine, exc, actor=actor,
                                now=collector.now())
    row = await collector.db(review_store.exception_row, collector.engine, exc_id)
    return JSONResponse(_exception_json(row, collector.now()), status_code=201)


async def api_revoke(request: Request) -> Response:
    collector, actor = await _api_actor(request, "drift.revoke")
    exc_id = _int(request.path_params["exc_id"], "exception id")
    fields = await _json_body(request)
    await collector.db(review_store.revoke_exception, collector.engine, exc_id, actor=actor,
                       reason=_text(fields, "reason"), now=collector.now())
    row = await collector.db(review_store.exception_row, collector.engine, exc_id)
    return JSONResponse(_exception_json(row, collector.now()))


async def _reader(request: Request) -> Collector:
    collector = _collector(request)
    await collector.db(reader_principal, collector.engine, request, collector.settings.proxy)
    return collector


async def api_exceptions(request: Request) -> Response:
    collector = await _reader(request)
    rows = await collector.db(review_store.exception_rows, collector.engine)
    now = collector.now()
    return JSONResponse({"items": [_exception_json(r, now) for r in rows], "total": len(rows)})


def _audit_json(row: Any) -> dict[str, Any]:
    return {"id": row.id, "at": format_time(row.at), "actor": row.actor, "actor_kind": row.actor_kind,
            "action": row.action, "target": row.target, "reason": row.reason,
            "details": json.loads(row.details)}


def audit_lines(rows: Iterator[Any], fmt: str, *, header: bool = True) -> Iterator[str]:
    """The audit log as JSON Lines or CSV (with its header line first when `header`), row by row."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if header:
            writer.writerow(AUDIT_FIELDS)
        for row in rows:
            record = _audit_json(row)
            record["details"] = json.dumps(record["details"], ensure_ascii=False)
            writer.writerow([record[f] if record[f] is not None else "" for f in AUDIT_FIELDS])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        yield buffer.getvalue()
        return
    for row in rows:
        yield json.dumps(_audit_json(row), ensure_ascii=False) + "\n"


async def api_audit(request: Request) -> Response:
    """The review audit log, oldest first: JSON (a page), or exported whole as JSON Lines or CSV."""
    collector = await _reader(request)
    fmt = params.choice(request.query_params, "format", ("json", "jsonl", "csv"), "json") or "json"
    if fmt == "json":
        page = params.page(request.query_params)
        rows, total = await collector.db(review_store.audit_page, collector.engine, page.limit, page.offset)
        return JSONResponse({"items": [_audit_json(r) for r in rows], "total": total, "limit": page.limit,
                             "offset": page.offset})
    return _audit_export(collector, fmt)


def _audit_export(collector: Collector, fmt: str) -> Response:
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"

    async def body() -> AsyncIterator[str]:  # keyset pages: memory stays flat however long the log
        after, header = 0, fmt == "csv"
        while True:
            rows = await collector.db(review_store.audit_after, collector.engine, after, AUDIT_BATCH)
            lines = list(audit_lines(iter(rows), fmt, header=header))
            header = False
            if lines:
                yield "".join(lines)
            if len(rows) < AUDIT_BATCH:
                return
            after = rows[-1].id

    headers = {"Content-Disposition": f'attachment; filename="drift-audit.{fmt}"'}
    return StreamingResponse(body(), media_type=media, headers=headers)


# -- UI -----------------------------------------------------------------------------------------------


async def _review_form(request: Request) -> dict[str, str]:
    """A review form's fields (ui_auth.read_form: blank ones left out, as absent; a field given twice,
    a body too large or not UTF-8 refused)."""
    return {name: values[0] for name, values in (await ui_auth.read_form(request)).items()}


async def _form_actor(request: Request, collector: Collector, allowed: frozenset[str],
                      action: str) -> tuple[dict[str, str], Actor]:
    """The form's fields and its reviewer, after the CSRF checks; ForbiddenError otherwise. A field not
    in `allowed` is refused (InvalidActionError), as in the API (_json_body): a misspelt `host_patern`
    would widen an exception to every host."""
    form = await _review_form(request)
    if not ui_auth.from_this_site(request, collector.settings.public_urls):
        raise ForbiddenError(ui_auth.CROSS_SITE)
    if not ui_auth.csrf_ok(request, form.get("csrf")):
        raise ForbiddenError("This form's CSRF token is missing or wrong: reload the page and try again.")
    principal = await collector.db(ui_auth.page_reader, collector, request)
    if principal is None:
        raise ForbiddenError("Sign in first.")
    ui_auth.require_form(collector, request, principal, action)
    unknown = sorted(set(form) - allowed)
    if unknown:
        raise InvalidActionError(f"{unknown[0][:40]!r}: not a field of this form (it takes "
                                 f"{', '.join(sorted(allowed - {'csrf', 'next'}))})")
    kind = "token" if principal.kind.value == "reviewer" else "proxy"
    return form, Actor(principal.name, kind)


def _form_error(request: Request, collector: Collector, e: CollectorError) -> Response:
    return render_page("error.html", e.status, message=str(e), now=collector.now(), path=request.url.path,
                       link=lambda **_: request.url.path, reader=None, review=None)


async def ui_ack(request: Request) -> Response:
    collector = _collector(request)
    try:
        action = _action(request)
        form, actor = await _form_actor(request, collector, ACK_FORM_FIELDS, f"drift.{action}")
        item_id = _int(request.path_params["item_id"], "item id")
        call = review_store.acknowledge if action == "ack" else review_store.unacknowledge_item
        await collector.db(call, collector.engine, item_id, actor=actor, reason=form.get("reason"),
                           now=collector.now())
    except CollectorError as e:
        return _form_error(request, collector, e)
    return RedirectResponse(ui_auth.safe_next(form.get("next")), status_code=303, headers=SECURITY_HEADERS)


@ui_page
async def ui_accept_form(request: Request, collector: Collector) -> Response:
    if not request.query_params.get("item"):
        raise BadRequestError("item: required (the drift item the exception starts from: "
                              "/drift/accept?item=ID)")
    item_id = _int(request.query_params.get("item", ""), "item")
    ref = await collector.db(review_store.item_json, collector.engine, item_id, now=collector.now())
    if request.state.review is None:
        raise ForbiddenError(REVIEW_REFUSED)
    return render_page("drift_accept.html", item=ref, note=APPLY_NOTE, error=None,
                       **common(request, collector))


async def ui_create_exception(request: Request) -> Response:
    collector = _collector(request)
    try:
        form, actor = await _form_actor(request, collector, EXCEPTION_FORM_FIELDS, "drift.accept")
        ref = await collector.db(_load_ref, collector.engine, form)
        exc = build_exception(dict(form), ref)
        await collector.db(review_store.create_exception, collector.engine, exc, actor=actor,
                           now=collector.now())
    except CollectorError as e:
        return _form_error(request, collector, e)
    return RedirectResponse("/drift/exceptions", status_code=303, headers=SECURITY_HEADERS)


async def ui_revoke(request: Request) -> Response:
    collector = _collector(request)
    try:
        form, actor = await _form_actor(request, collector, REVOKE_FORM_FIELDS, "drift.revoke")
        exc_id = _int(request.path_params["exc_id"], "exception id")
        await collector.db(review_store.revoke_exception, collector.engine, exc_id, actor=actor,
                           reason=form.get("reason"), now=collector.now())
    except CollectorError as e:
        return _form_error(request, collector, e)
    return RedirectResponse("/drift/exceptions", status_code=303, headers=SECURITY_HEADERS)


@ui_page
async def ui_exceptions(request: Request, collector: Collector) -> Response:
    rows = await collector.db(review_store.exception_rows, collector.engine)
    now = collector.now()
    return render_page("drift_exceptions.html", exceptions=[_exception_json(r, now) for r in rows],
                       note=APPLY_NOTE, api="/api/v1/drift/exceptions", **common(request, collector))


@ui_page
async def ui_audit_export(request: Request, collector: Collector) -> Response:
    """The audit log's download for signed-in readers (the API's twin takes a bearer token)."""
    fmt = params.choice(request.query_params, "format", ("jsonl", "csv"), "csv") or "csv"
    return _audit_export(collector, fmt)


@ui_page
async def ui_audit(request: Request, collector: Collector) -> Response:
    pg = page_params(request)
    rows, total = await collector.db(review_store.audit_page, collector.engine, pg.limit, pg.offset)
    return render_page("drift_audit.html", audit=Listing([_audit_json(r) for r in rows], total), page=pg,
                       api="/api/v1/drift/audit", **common(request, collector))


API_ROUTES = [  # reads: in the OpenAPI document
    Route("/api/v1/drift/exceptions", api_exceptions, methods=["GET"]),
    Route("/api/v1/drift/audit", api_audit),
]
# The actions (reviewer only): in the OpenAPI document too (openapi._review_actions).
API_ACTION_ROUTES = [
    Route("/api/v1/drift/items/{item_id}/{action}", api_ack, methods=["POST"]),
    Route("/api/v1/drift/exceptions", api_create_exception, methods=["POST"]),
    Route("/api/v1/drift/exceptions/{exc_id}/revoke", api_revoke, methods=["POST"]),
]
PAGE_ROUTES = [
    Route("/drift/items/{item_id}/{action}", ui_ack, methods=["POST"]),
    Route("/drift/accept", ui_accept_form),
    Route("/drift/exceptions", ui_exceptions, methods=["GET"]),
    Route("/drift/exceptions", ui_create_exception, methods=["POST"]),
    Route("/drift/exceptions/{exc_id}/revoke", ui_revoke, methods=["POST"]),
    Route("/drift/audit", ui_audit),
    Route("/drift/audit/export", ui_audit_export),
]
__all__ = ["API_ACTION_ROUTES", "API_ROUTES", "PAGE_ROUTES", "build_exception", "parse_expiry"]
