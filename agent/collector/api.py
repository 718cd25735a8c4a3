"""HTTP handlers of the ingest and query API. Database calls run in the thread pool; errors are
raised as CollectorError and turned into JSON by the app's handler."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from agent.collector import params, queries, store
from agent.collector.auth import bearer, check_client_cert, ingest_principal, reader_principal
from agent.collector.bodies import read_body
from agent.collector.errors import (
    CollectorError,
    ForbiddenError,
    UnauthorizedError,
)
from agent.collector.metrics import render
from agent.collector.openapi import document
from agent.collector.payload import parse_report
from agent.collector.queries import Listing, Page
from agent.collector.report_times import CLOCK_AHEAD_WARN_S, seconds_ahead
from agent.collector.tokens import Principal, TokenKind

if TYPE_CHECKING:
    from agent.collector.context import Collector
    from agent.collector.group_commit import GroupCommit

log = logging.getLogger(__name__)


def _collector(request: Request) -> Collector:
    collector: Collector = request.app.state.collector
    return collector


async def _cached_ingest_principal(group: GroupCommit, request: Request) -> tuple[Principal, str]:
    """`ingest_principal` through GroupCommit's token map (the same 401 and 403)."""
    secret = bearer(request)
    if secret is None:
        raise UnauthorizedError("missing bearer token (Authorization: Bearer TOKEN)")
    principal, token_hash = await group.principal(secret)
    if principal is None:
        raise UnauthorizedError("unknown or revoked token")
    if principal.kind is not TokenKind.INGEST:
        raise ForbiddenError("a reader token cannot send reports; use the host's ingest token")
    return principal, token_hash


async def post_report(request: Request) -> Response:
    """Store one report: 201 created (after the commit), 200 duplicate run_id, 4xx with a reason."""
    collector, started = _collector(request), time.perf_counter()
    try:
        token_hash = None
        if collector.group is not None:  # group commit: a cached check, the batch checks revocation again
            principal, token_hash = await _cached_ingest_principal(collector.group, request)
        else:
            principal = await collector.db(ingest_principal, collector.engine, request)
        try:
            raw = await read_body(request, collector.settings.max_body_bytes)
            report = parse_report(raw, collector.settings.payload)
            store.check_storable(report)  # before the host check, so the 422 names the field
            if report.host != principal.name:
                raise ForbiddenError(f"this token is bound to host {principal.name!r}, not {report.host!r}")
            if collector.settings.client_cert_required:
                check_client_cert(request, report.host)
        except CollectorError:
            if collector.group is not None:  # the token came from the map: revoked since answers 401
                await collector.group.confirm(bearer(request) or "")
            raise
        received_at = collector.now()
        if collector.group is not None:
            created = await collector.group.ingest(report, raw, received_at=received_at,
                                                   token_hash=token_hash)
        else:
            created = await collector.db(store.ingest, collector.engine, report, raw,
                                         received_at=received_at, expect=collector.settings.expect)
    except Exception as e:
        result = (f"rejected_{e.status}" if isinstance(e, CollectorError)
                  else "disconnected" if isinstance(e, ClientDisconnect) else "error")
        collector.metrics.observe_ingest(result, time.perf_counter() - started)
        raise
    result = "created" if created else "duplicate"
    collector.metrics.observe_ingest(result, time.perf_counter() - started)
    ahead_s = seconds_ahead(report, received_at)
    if created and ahead_s > CLOCK_AHEAD_WARN_S:
        collector.metrics.clock_ahead += 1
        log.warning("host=%s run_id=%s: finished_at is %.0fs ahead of this collector's clock; its times "
                    "are stored as the receive time (check the host's clock)", report.host, report.run_id,
                    ahead_s)
    # encoded by msgspec: the bytes JSONResponse would send, without building a json encoder per answer
    return Response(msgspec.json.encode({"run_id": report.run_id, "result": result}),
                    status_code=201 if created else 200, media_type="application/json")


async def _reader(request: Request) -> Collector:
    collector = _collector(request)
    await collector.db(reader_principal, collector.engine, request, collector.settings.proxy)
    return collector


def _page(request: Request) -> Page:
    return params.page(request.query_params)


def _listing(listing: Listing, page: Page, **extra: Any) -> dict[str, Any]:
    following = page.offset + page.limit
    return {**extra, "items": listing.items, "total": listing.total, "limit": page.limit,
            "offset": page.offset, "next_offset": following if following < listing.total else None}


async def list_hosts(request: Request) -> Response:
    collector, page = await _reader(request), _page(request)
    f = params.host_filter(request.query_params, collector.now())
    stale_before = collector.stale_before()
    listing = await collector.db(queries.list_hosts, collector.engine, f, page, stale_before=stale_before)
    counts = await collector.db(queries.status_counts, collector.engine, stale_before=stale_before)
    return JSONResponse(_listing(listing, page, counts=counts))


async def get_host(request: Request) -> Response:
    collector = await _reader(request)
    host = await collector.db(queries.get_host, collector.engine, request.path_params["host"],
                              stale_before=collector.stale_before(), now=collector.now())
    return JSONResponse(host)


async def host_runs(request: Request) -> Response:
    collector, page = await _reader(request), _page(request)
    listing = await collector.db(queries.host_runs, collector.engine, request.path_params["host"], page,
                                      status=params.run_statuses(request.query_params))
    return JSONResponse(_listing(listing, page))


async def get_run(request: Request) -> Response:
    collector = await _reader(request)
    run = await collector.db(queries.get_run, collector.engine, request.path_params["run_id"])
    return JSONResponse(run)


async def drift(request: Request) -> Response:
    """Current drift: grouped by task (group=task, default) or one row per host and task (group=host)."""
    collector, page = await _reader(request), _page(request)
    group, filters = params.drift_group(request.query_params), params.drift_filters(request.query_params)
    if group == "task":
        listing = await collector.db(queries.drift_by_task, collector.engine, page, now=collector.now(),
                                     **filters)
    else:
        listing = await collector.db(queries.drift_items_now, collector.engine, page, now=collector.now(),
                                     **filters)
    return JSONResponse(_listing(listing, page, group=group))


async def commit_rollout(request: Request) -> Response:
    collector, page = await _reader(request), _page(request)
    reached = params.rollout_hosts(request.query_params)
    result = await collector.db(queries.commit_rollout, collector.engine, request.path_params["sha"], page,
        stale_before=collector.stale_before(), reached=reached == "running")
    result["hosts"] = _listing(result["hosts"], page)
    return JSONResponse(result)


async def openapi(request: Request) -> Response:
    return JSONResponse(document())


async def healthz(request: Request) -> Response:
    collector = _collector(request)
    try:
        await collector.db(queries.ping, collector.engine)
    except Exception as e:  # any failure here means "not healthy", said as such
        collector.metrics.db_errors += 1
        return JSONResponse({"status": "error", "database": f"unreachable: {type(e).__name__}"}, 503)
    # "leader": whether this process runs the leader-only work (notifier, heads poll, prune) as of its last
    # try; null when it has none to run (docs/scale.md)
    return JSONResponse({"status": "ok", "database": "ok", "leader": collector.leader.leading})


async def metrics(request: Request) -> Response:
    collector = _collector(request)
    if not collector.settings.public_metrics:
        await _reader(request)
    fleet = await collector.db(queries.fleet_counts, collector.engine,
                                    stale_before=collector.stale_before())
    return PlainTextResponse(render(collector.metrics, fleet, leader=collector.leader.leading),
                             media_type="text/plain; version=0.0.4")



async def list_runs(request: Request) -> Response:
    """Runs across the fleet, newest first (`status`, `commit` prefix); a host's own: /hosts/{host}/runs."""
    collector, page = await _reader(request), _page(request)
    listing = await collector.db(queries.recent_runs, collector.engine, page,
                                 status=params.run_statuses(request.query_params),
                                 commit=params.text(request.query_params, "commit"))
    return JSONResponse(_listing(listing, page))


async def list_commits(request: Request) -> Response:
    """Commits some host reported, newest first, with how many hosts run it and how many converged."""
    collector, page = await _reader(request), _page(request)
    listing = await collector.db(queries.list_commits, collector.engine, page)
    return JSONResponse(_listing(listing, page))
