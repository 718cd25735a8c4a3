"""HTTP handlers of self-enrolment (agent.collector.enrolment; docs/collector.md "Enrolment").

- ``POST /api/v1/enrolments``: a host asks for a token: ``{"host", "pickup_sha256", "groups"?}`` with a
  site enrolment secret (``Authorization: Bearer SECRET``, a token of kind enrol) or, when the collector
  requires client certificates (``serve --tls-client-ca``), the certificate that names the host.
  201 a new request, 200 the same request again; 401/403 unauthenticated or the wrong certificate, 429
  too many pending.
- ``POST /api/v1/enrolments/{id}/pickup``: the host's poll, ``Authorization: Bearer PICKUP_SECRET``;
  ``{"state": "pending" | "denied" | "collected", "token"?: ...}``; 404 for an unknown id or wrong secret.
- ``GET /api/v1/enrolments?state=pending|approved|denied|collected|all``: readers.
- ``GET /enrolments``: the web UI's list of pending requests (readers).
- ``POST /api/v1/enrolments/approve`` and ``/deny``: an operator (``serve --operator``); ``{"ids": [...]}``
  or ``{"pattern": GLOB}`` or ``{"group": NAME}``, with ``"reason"`` and, for ids, ``"existing": true``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.collector import enrolment, tokens, ui
from agent.collector.auth import CLIENT_CERT_HOST, acting_principal, bearer, reader_principal
from agent.collector.bodies import read_json_object
from agent.collector.enrolment import EnrolAuth, EnrolPolicy, EnrolState, Selection
from agent.collector.errors import BadRequestError, ForbiddenError, UnauthorizedError
from agent.collector.tokens import TokenKind
from agent.collector.ui_render import render_page

if TYPE_CHECKING:
    from agent.collector.context import Collector

MAX_JSON_BYTES = 64 * 1024


def _collector(request: Request) -> Collector:
    collector: Collector = request.app.state.collector
    return collector


def _policy(collector: Collector) -> EnrolPolicy:
    return collector.settings.enrol


async def _authenticate(collector: Collector, request: Request, host: str) -> tuple[EnrolAuth, str]:
    """How this request proves it may enrol `host`: the certificate naming it (when the collector requires
    client certificates), else a site enrolment secret."""
    if collector.settings.client_cert_required:
        name = request.scope.get("state", {}).get(CLIENT_CERT_HOST)
        if name != host:
            raise ForbiddenError(f"the client certificate is for host {name!r}, not {host!r}" if name else
                                 "a client certificate naming this host is required")
        return EnrolAuth.CERTIFICATE, name
    secret = bearer(request)
    if secret is None:
        raise UnauthorizedError("missing site enrolment secret (Authorization: Bearer SECRET; "
                                "gitops-collector token create --enrol NAME)")
    principal = await collector.db(tokens.authenticate, collector.engine, secret)
    if principal is None:
        raise UnauthorizedError("unknown or revoked enrolment secret")
    if principal.kind is not TokenKind.ENROL:
        raise ForbiddenError(f"a {principal.kind.value} token cannot enrol hosts; use a site enrolment "
                             "secret")
    return EnrolAuth.SECRET, principal.name


async def post_enrolment(request: Request) -> Response:
    collector = _collector(request)
    data = await read_json_object(request, MAX_JSON_BYTES)
    host = data.get("host")
    groups = enrolment.check_request(host, data.get("groups"), data.get("pickup_sha256"))
    assert isinstance(host, str)
    auth, auth_name = await _authenticate(collector, request, host)
    address = request.client.host if request.client is not None else "-"
    made, new = await collector.db(
        enrolment.request, collector.engine, host=host, groups=groups, pickup_hash=data["pickup_sha256"],
        auth=auth, auth_name=auth_name, address=address, policy=_policy(collector), now=collector.now())
    body = {"id": made.id, "host": made.host, "state": made.state.value,
            "pickup": f"/api/v1/enrolments/{made.id}/pickup"}
    return JSONResponse(body, status_code=201 if new else 200)


async def post_pickup(request: Request) -> Response:
    collector = _collector(request)
    secret = bearer(request)
    if secret is None:
        raise UnauthorizedError("missing pickup secret (Authorization: Bearer PICKUP_SECRET)")
    made, token = await collector.db(enrolment.pickup, collector.engine, request.path_params["id"], secret,
                                     now=collector.now())
    body: dict[str, Any] = {"id": made.id, "host": made.host, "state": made.state.value}
    if made.state is EnrolState.DENIED:
        body.update(decided_by=made.decided_by, reason=made.reason)
    if token is not None:
        body["token"] = token
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def list_enrolments(request: Request) -> Response:
    collector = _collector(request)
    await collector.db(reader_principal, collector.engine, request, collector.settings.proxy)
    wanted = request.query_params.get("state", "pending")
    if wanted == "all":
        states: tuple[EnrolState, ...] = ()
    else:
        try:
            states = (EnrolState(wanted),)
        except ValueError:
            raise BadRequestError(f"state: {wanted[:40]!r} is not one of pending, approved, denied, "
                                  "collected, all") from None
    found = await collector.db(enrolment.list_requests, collector.engine, states)
    return JSONResponse({"enrolments": [e.as_json() for e in found]})


DECISION_FIELDS = frozenset({"ids", "pattern", "group", "reason", "existing"})


def selection_of(data: dict[str, Any]) -> Selection:
    ids, pattern, group = data.get("ids", []), data.get("pattern"), data.get("group")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadRequestError("ids: must be a list of request ids (strings)")
    for key, value in (("pattern", pattern), ("group", group)):
        if value is not None and (not isinstance(value, str) or not value or "\x00" in value):
            raise BadRequestError(f"{key}: must be a non-empty string without NUL")
    selection = Selection(tuple(ids), pattern, group)
    selection.check()
    return selection


async def _decide(request: Request, approve: bool) -> Response:
    collector = _collector(request)
    settings = collector.settings
    principal = await collector.db(acting_principal, collector.engine, request, settings.proxy,
                                   "enrolment.approve" if approve else "enrolment.deny",
                                   reviewers=settings.reviewers, operators=settings.operators)
    actor = principal.name
    data = await read_json_object(request, MAX_JSON_BYTES)
    unknown = sorted(set(data) - DECISION_FIELDS)  # ignored, a `dry_run` would decide for real
    if unknown:
        raise BadRequestError(f"{unknown[0][:40]!r}: not a field of this action (it takes "
                              f"{', '.join(sorted(DECISION_FIELDS))})")
    reason, existing = data.get("reason"), data.get("existing", False)
    if not isinstance(reason, str):
        raise BadRequestError("reason: must be a string saying why")
    if not isinstance(existing, bool):
        raise BadRequestError("existing: must be true or false")
    decision = await collector.db(enrolment.decide, collector.engine, selection_of(data), approve=approve,
                                  actor=actor, reason=reason, now=collector.now(), allow_existing=existing)
    return JSONResponse({"decided": [e.as_json() for e in decision.decided],
                         "skipped": [{**e.as_json(), "why": why} for e, why in decision.skipped]})


async def post_approve(request: Request) -> Response:
    return await _decide(request, True)


async def post_deny(request: Request) -> Response:
    return await _decide(request, False)


@ui.ui_page
async def page(request: Request, collector: Collector) -> Response:
    """The web UI's list of pending requests (read-only; deciding is the CLI's and the API's)."""
    found = await collector.db(enrolment.list_requests, collector.engine, (EnrolState.PENDING,))
    return render_page("enrolments.html", requests=[r.as_json() for r in found], api="/api/v1/enrolments",
                       **ui.common(request, collector))


PAGE_ROUTES = [Route("/enrolments", page)]

ROUTES = [
    Route("/api/v1/enrolments", post_enrolment, methods=["POST"]),
    Route("/api/v1/enrolments", list_enrolments, methods=["GET"]),
    Route("/api/v1/enrolments/approve", post_approve, methods=["POST"]),
    Route("/api/v1/enrolments/deny", post_deny, methods=["POST"]),
    Route("/api/v1/enrolments/{id}/pickup", post_pickup, methods=["POST"]),
]
