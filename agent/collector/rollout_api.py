"""HTTP handlers of rollouts (docs/rollout.md): what agents ask, what operators do, and the commit page's
forms.

- ``GET /api/v1/rollouts/{commit}?policy=DIGEST`` (a host's ingest token): the rollout state the gate
  needs; 404 ``unknown policy`` until some host sent the policy. With an ``ETag``: an unchanged answer
  is a 304 to ``If-None-Match``.
- ``PUT /api/v1/rollouts/{commit}/policy?policy=DIGEST`` (ingest token): the text of rollout.yml.
- ``GET /api/v1/rollouts/{commit}/control`` (reader): what the commit page shows.
- ``POST /api/v1/rollouts/{commit}/actions`` and ``.../approvals`` (an operator: a reader named with
  ``serve --operator``; JSON bodies, so a cross-site form cannot send them): halt, resume, skip a wave;
  approve plan digests. Each is logged with who, when and why.
- ``POST /commits/{sha}/rollout``: the same from the commit page's forms (session of an operator, and the
  Origin/Referer check of every form, agent.collector.ui_auth.from_this_site); then back to the commit
  page, whose rollout control section (``control``) shows the result. ``GET /commits/{sha}/rollout``
  (the control's former page) redirects there.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
from sqlalchemy import Engine, select
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from agent.collector import queries, rollout_store, tokens, ui_auth
from agent.collector.auth import acting_principal, bearer, ingest_principal, reader_principal
from agent.collector.bodies import read_body, read_json_object
from agent.collector.errors import (
    BadRequestError,
    CollectorError,
    ForbiddenError,
    InvalidActionError,
    NotFoundError,
)
from agent.collector.tables import tokens as tokens_table
from agent.collector.tokens import Principal, TokenKind
from agent.collector.ui_render import SECURITY_HEADERS, render_page

if TYPE_CHECKING:
    from agent.collector.context import Collector

MAX_JSON_BYTES = 64 * 1024
TOKENS_S = 1.0  # the agents' GET reads the valid ingest tokens at most this often per process
VALID_INGEST = select(tokens_table.c.token_hash).where(tokens_table.c.revoked_at.is_(None),
                                                         tokens_table.c.kind == TokenKind.INGEST.value)


def _collector(request: Request) -> Collector:
    collector: Collector = request.app.state.collector
    return collector


def notify_of(collector: Collector) -> rollout_store.Notify:
    s = collector.settings
    return rollout_store.Notify(s.webhooks, s.alert_grouping, s.public_urls[0] if s.public_urls else None)


def check_operator(collector: Collector, request: Request, principal: Principal | None, action: str) -> str:
    """The actor's name, or 403: whether they may do ``action`` is auth.PRIVILEGES's to say (rollout
    actions: a reader named with ``serve --operator``)."""
    return ui_auth.require_form(collector, request, principal, action).name


def _policy_param(request: Request) -> str:
    digest = request.query_params.get("policy")
    if not digest:
        raise BadRequestError("policy: give the policy digest (?policy=SHA256 of rollout.yml's policy)")
    return rollout_store.check_digest(digest, "policy")


def _ingest_hashes(engine: Engine) -> frozenset[str]:
    with engine.connect() as conn:
        return frozenset(conn.execute(VALID_INGEST).scalars())


async def _agent(request: Request, collector: Collector) -> None:
    """The agents' GET needs a valid ingest token. Checked against a per-process copy of the hashes of every
    valid ingest token, read at most once per TOKENS_S, so a revocation takes effect within a second here
    (as on /api/v1/heads): with 1,000 agents asking, a database lookup per ask bounded the collector to
    about 40 answers a second (bench/rollout_sim.py). A token not in the copy gets the exact check and its
    401 or 403."""
    secret = bearer(request)
    if secret is not None:
        copy: tuple[float, frozenset[str]] | None = getattr(request.app.state, "rollout_tokens", None)
        now = time.monotonic()
        if copy is None or now - copy[0] >= TOKENS_S:
            hashes = await collector.db(_ingest_hashes, collector.engine)
            copy = request.app.state.rollout_tokens = (now, hashes)
        if tokens.hash_token(secret) in copy[1]:
            return
    await collector.db(ingest_principal, collector.engine, request)


async def get_rollout(request: Request) -> Response:
    collector = _collector(request)
    await _agent(request, collector)
    commit, digest = request.path_params["commit"], _policy_param(request)
    body, etag = await _cached_answer(request, collector, commit, digest)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


async def _cached_answer(
    request: Request, collector: Collector, commit: str, digest: str
) -> tuple[bytes, str]:
    """The answer and its ETag, computed at most once per ``settings.rollout_cache_s`` per process
    (docs/rollout.md, Cache: thousands of agents polling ask for the same few answers)."""
    cache: dict[tuple[str, str], tuple[float, bytes, str]] | None = getattr(
        request.app.state, "rollout_answers", None
    )
    if cache is None:
        cache = request.app.state.rollout_answers = {}
    lock: anyio.Lock | None = getattr(request.app.state, "rollout_lock", None)
    if lock is None:
        lock = request.app.state.rollout_lock = anyio.Lock()
    key = (commit, digest)
    async with lock:  # one computation at a time: requests arriving meanwhile take its result
        hit = cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1], hit[2]
        result = await collector.db(
            rollout_store.answer,
            collector.engine,
            commit,
            digest,
            now=collector.now(),
            notify=notify_of(collector),
        )
        body = json.dumps(result, separators=(",", ":"), sort_keys=True).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        if collector.settings.rollout_cache_s > 0:
            if len(cache) > 1000:
                cache.clear()
            cache[key] = (time.monotonic() + collector.settings.rollout_cache_s, body, etag)
    return body, etag


async def put_policy(request: Request) -> Response:
    collector = _collector(request)
    await collector.db(ingest_principal, collector.engine, request)
    commit, digest = request.path_params["commit"], _policy_param(request)
    raw = await read_body(request, rollout_store.MAX_POLICY_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequestError("body: rollout.yml must be UTF-8 text") from e
    created = await collector.db(
        rollout_store.store_policy, collector.engine, commit, digest, text, now=collector.now()
    )
    return JSONResponse(
        {"commit": commit, "policy_digest": digest, "result": "created" if created else "known"},
        status_code=201 if created else 200,
    )


async def get_control(request: Request) -> Response:
    collector = _collector(request)
    await collector.db(reader_principal, collector.engine, request, collector.settings.proxy)
    result = await collector.db(
        rollout_store.view,
        collector.engine,
        request.path_params["commit"],
        now=collector.now(),
        notify=notify_of(collector),
    )
    if result is None:
        raise NotFoundError("no rollout known for this commit")
    return JSONResponse(result)


ACTION_FIELDS = frozenset({"action", "wave", "reason"})
APPROVAL_FIELDS = frozenset({"plan_digests", "reason"})


async def _json(request: Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The body's JSON object; BadRequestError naming the first field not in `allowed` (a misspelt one
    must not be ignored, as the commit page's forms and the review API refuse it)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise BadRequestError("Content-Type: must be application/json")
    data = await read_json_object(request, MAX_JSON_BYTES)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequestError(f"{unknown[0][:40]!r}: not a field of this action (it takes "
                              f"{', '.join(sorted(allowed))})")
    return data


def _text(data: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadRequestError(f"{key}: must be a string")
    return value


async def _operator(request: Request, action: str) -> tuple[Collector, str]:
    collector = _collector(request)
    settings = collector.settings
    principal = await collector.db(acting_principal, collector.engine, request, settings.proxy, action,
                                   reviewers=settings.reviewers, operators=settings.operators)
    return collector, principal.name


async def post_action(request: Request) -> Response:
    collector, actor = await _operator(request, "rollout.act")
    data = await _json(request, ACTION_FIELDS)
    row = await collector.db(
        rollout_store.act,
        collector.engine,
        request.path_params["commit"],
        _text(data, "action") or "",
        actor=actor,
        reason=_text(data, "reason") or "",
        now=collector.now(),
        wave=_text(data, "wave", required=False),
    )
    return JSONResponse(row, status_code=201)


async def post_approvals(request: Request) -> Response:
    collector, actor = await _operator(request, "rollout.approve")
    data = await _json(request, APPROVAL_FIELDS)
    digests = data.get("plan_digests")
    if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
        raise BadRequestError("plan_digests: must be a list of plan digests (strings)")
    added = await collector.db(
        rollout_store.approve,
        collector.engine,
        request.path_params["commit"],
        digests,
        actor=actor,
        reason=_text(data, "reason") or "",
        now=collector.now(),
    )
    return JSONResponse({"approved": added}, status_code=201)


# The fields each of the commit page's forms takes (besides csrf and op), by its op
ROLLOUT_FORMS: dict[str, frozenset[str]] = {
    "approve": frozenset({"plan_digest", "reason"}),
    "halt": frozenset({"reason"}),
    "resume": frozenset({"reason"}),
    "skip": frozenset({"wave", "reason"}),
}


def _form_op(form: dict[str, list[str]]) -> str:
    """The form's op when it is one of ROLLOUT_FORMS and every other field is one that op's form takes;
    InvalidActionError naming the form's own field otherwise (a wave on a halt is not silently dropped)."""
    op = form.get("op", [""])[0]
    if op not in ROLLOUT_FORMS:
        raise InvalidActionError(f"op: must be one of {', '.join(ROLLOUT_FORMS)}, got {op[:40]!r}")
    takes = ROLLOUT_FORMS[op]
    unknown = sorted(set(form) - takes - {"csrf", "op"})
    if unknown:
        raise InvalidActionError(f"{unknown[0][:40]!r}: not a field of the {op} form (it takes "
                                 f"{', '.join(sorted(takes))})")
    if "wave" in takes and not form.get("wave"):
        raise InvalidActionError(f"wave: required to {op}")
    return op


async def page_action(request: Request) -> Response:
    """The commit page's forms: op=halt|resume|skip|approve, wave, plan_digest (repeatable), reason, and
    the page's CSRF token (csrf). Refused as the review forms are (agent.collector.review_views): from
    another site, without the token, a field this form does not take, given twice, not UTF-8, too large."""
    collector, sha = _collector(request), request.path_params["sha"]
    principal: Principal | None = None
    try:
        form = await ui_auth.read_form(request, repeatable=frozenset({"plan_digest"}))
        if not ui_auth.from_this_site(request, collector.settings.public_urls):
            raise ForbiddenError(ui_auth.CROSS_SITE)
        if not ui_auth.csrf_ok(request, form.get("csrf", [""])[0]):
            raise ForbiddenError("This form's CSRF token is missing or wrong: reload the page and try again.")
        principal = await collector.db(ui_auth.page_reader, collector, request)
        if principal is None:
            return ui_auth.login_redirect(request)
        op, reason = form.get("op", [""])[0], form.get("reason", [""])[0]
        actor = check_operator(collector, request, principal, "rollout.approve" if op == "approve" else
                               "rollout.act")
        op = _form_op(form)
        if op == "approve":
            await collector.db(
                rollout_store.approve,
                collector.engine,
                sha,
                form.get("plan_digest", []),
                actor=actor,
                reason=reason,
                now=collector.now(),
            )
        else:
            await collector.db(
                rollout_store.act,
                collector.engine,
                sha,
                op,
                actor=actor,
                reason=reason,
                now=collector.now(),
                wave=form.get("wave", [None])[0],
            )
    except CollectorError as e:
        return render_page(
            "error.html",
            e.status,
            message=str(e),
            now=collector.now(),
            path="/",
            reader=principal.name if principal is not None else None,
            link=lambda **_: "/",
        )
    return RedirectResponse(
        f"/commits/{quote(sha, safe='')}#rollout", status_code=303, headers=SECURITY_HEADERS
    )


async def control(collector: Collector, sha: str, operator: bool, csrf: str | None = None
                  ) -> dict[str, Any] | None:
    """The commit page's rollout control (agent.collector.ui.commit): the view of rollout_store.view with
    each pending plan's drift in the approval-required roles (from the run that reported it), and whether
    the page's reader may act (``operator``: ui_auth.has_page_role) and the token its forms carry
    (``csrf``: ui_auth.form_token);
    None when no host reported a rollout.yml for ``sha`` (a full commit id)."""
    rollout_store.check_commit(sha)
    view = await collector.db(
        rollout_store.view, collector.engine, sha, now=collector.now(), notify=notify_of(collector)
    )
    if view is None:
        return None
    roles = set(view["approve_roles"])
    for plan in view["pending_plans"]:
        run = await collector.db(queries.get_run, collector.engine, plan["run_id"])
        plan["drift"] = [d for d in run["report"].get("drift", []) if d.get("role") in roles]
    return {
        "view": view,
        "operator": operator,
        "csrf": csrf,
        "action": f"/commits/{quote(sha, safe='')}/rollout",
        "api": f"/api/v1/rollouts/{quote(sha, safe='')}/control",
    }


async def page(request: Request) -> Response:
    """The rollout control used to be its own page: it is now a section of the commit page."""
    target = f"/commits/{quote(request.path_params['sha'], safe='')}#rollout"
    return RedirectResponse(target, status_code=301, headers=SECURITY_HEADERS)


API_ROUTES = [
    Route("/api/v1/rollouts/{commit}", get_rollout),
    Route("/api/v1/rollouts/{commit}/policy", put_policy, methods=["PUT"]),
    Route("/api/v1/rollouts/{commit}/control", get_control),
    Route("/api/v1/rollouts/{commit}/actions", post_action, methods=["POST"]),
    Route("/api/v1/rollouts/{commit}/approvals", post_approvals, methods=["POST"]),
]
PAGE_ROUTES = [
    Route("/commits/{sha}/rollout", page_action, methods=["POST"]),
    Route("/commits/{sha}/rollout", page, methods=["GET"]),
]
