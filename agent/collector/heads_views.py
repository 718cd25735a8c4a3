"""HTTP side of the commit beacon (agent.collector.heads): the heads endpoint agents poll, the push hooks
Git servers call, and the leader's heads poll that runs beside the app.

- `GET /api/v1/heads?source=URL&ref=REF` (any valid token): `{"source", "ref", "commit", "seen_at"}` with
  `ETag: "<commit>"`; with `If-None-Match` naming the same commit, `304` and no body. 404 when the source or
  ref is not watched (`serve --heads-source`), or Git has not answered for it yet.
- `POST /api/v1/hooks/{github,gitlab,gitea,generic}`: a verified push to a watched ref makes this process
  ask Git at once (one `ls-remote`, whatever the fleet's size) and answers 200 with the heads that changed;
  a push to anything else is 202 and ignored (so the Git server's retries stop); a bad signature 401.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.collector import tokens
from agent.collector.auth import bearer
from agent.collector.bodies import read_body
from agent.collector.errors import BadRequestError, CollectorError, NotFoundError, UnauthorizedError
from agent.collector.heads import VENDORS, Beacon, hook_push, matches, pick, source_key, verify_hook
from agent.redact import redact_url
from agent.report import format_time

if TYPE_CHECKING:
    from agent.collector.context import Collector

log = logging.getLogger(__name__)
HOOK_BODY_LIMIT = 25 * 1024 * 1024  # GitHub's own cap on a delivery's payload


def _beacon(request: Request) -> tuple[Collector, Beacon]:
    collector: Collector = request.app.state.collector
    if collector.beacon is None:
        raise NotFoundError("this collector watches no Git source (serve --heads-source URL[#REF,...])")
    return collector, collector.beacon


async def get_heads(request: Request) -> Response:
    collector, beacon = _beacon(request)
    secret = bearer(request)
    if secret is None:
        raise UnauthorizedError("missing bearer token (Authorization: Bearer TOKEN)")
    valid = beacon.cached_tokens()
    if valid is None:
        valid = await collector.db(beacon.valid_tokens)
    if tokens.hash_token(secret) not in valid:
        raise UnauthorizedError("unknown or revoked token")
    url, ref = request.query_params.get("source", ""), request.query_params.get("ref", "")
    if not url or not ref:
        raise BadRequestError("give ?source=URL&ref=REF (the agent's source.url and source.ref)")
    key = source_key(url)
    if key not in beacon.by_key():
        raise NotFoundError(f"source {redact_url(url)} is not watched by this collector")
    heads = beacon.cached_heads()
    if heads is None:
        heads = await collector.db(beacon.heads)
    found = heads.get(key, {})
    commit = pick({name: c for name, (c, _) in found.items()}, ref)
    if commit is None:
        raise NotFoundError(f"no head known for ref {ref!r} of {redact_url(url)} (not watched, or Git "
                            "has not answered yet)")
    etag = f'"{commit}"'
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers={"ETag": etag})
    seen_at = next(s for name, (c, s) in found.items() if c == commit)
    return JSONResponse({"source": redact_url(url), "ref": ref, "commit": commit,
                         "seen_at": format_time(seen_at)}, headers={"ETag": etag})


async def post_hook(request: Request) -> Response:
    collector, beacon = _beacon(request)
    vendor = request.path_params["vendor"]
    if vendor not in VENDORS:
        raise NotFoundError(f"no such hook {vendor!r}; expected one of {', '.join(VENDORS)}")
    secret = beacon.settings.hook_secret
    if secret is None:
        raise NotFoundError("push hooks are off (serve --hook-secret-file FILE)")
    body = await read_body(request, HOOK_BODY_LIMIT)
    verify_hook(vendor, request.headers, body, secret)
    push = hook_push(vendor, body)
    by_key = beacon.by_key()
    source = next((by_key[k] for k in map(source_key, push.urls) if k in by_key), None)
    if source is None or not matches(source, push.ref):
        log.info("%s hook for %s %s ignored: not a watched source and ref", vendor,
                 redact_url(push.urls[0]), push.ref)
        return JSONResponse({"ignored": "not a watched source and ref"}, status_code=202)
    changed = await collector.db(beacon.refresh, source, now=collector.now(), via=vendor)
    return JSONResponse({"source": redact_url(source.url), "ref": push.ref, "changed": changed})


ROUTES = [
    Route("/api/v1/heads", get_heads),
    Route("/api/v1/hooks/{vendor}", post_hook, methods=["POST"]),
]


async def poll_loop(collector: Collector, beacon: Beacon) -> None:
    """Every `poll_s`: when this process leads (or becomes leader), one ls-remote per watched source."""
    was_leader = False
    while True:
        try:
            leader = await anyio.to_thread.run_sync(beacon.leader.try_lead)
            if leader != was_leader:
                log.info("heads poll: %s", "this process leads" if leader else "another process leads")
                was_leader = leader
            if leader:
                for source in beacon.settings.sources:
                    try:
                        await collector.db(beacon.refresh, source, now=collector.now(), via="poll")
                    except CollectorError as e:
                        log.warning("heads poll: %s", e)
        except Exception:  # the loop outlives a failed round (database down): retried next time
            log.exception("heads poll failed")
        await anyio.sleep(beacon.settings.poll_s)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Runs the heads poll beside the app while sources are watched."""
    collector: Collector = app.state.collector
    beacon = collector.beacon
    if beacon is None or not beacon.settings.sources:
        yield
        return
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(poll_loop, collector, beacon)
        yield
        tasks.cancel_scope.cancel()
    beacon.leader.release()
