"""HTTP handlers of the ingest and query API. Database calls run in the thread pool; errors are
raised as CollectorError and turned into JSON by the app's handler."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from agent.collector import queries, store
from agent.collector.auth import check_client_cert, ingest_principal, reader_principal
from agent.collector.errors import (
    BadRequestError,
    CollectorError,
    ForbiddenError,
    TooLargeError,
)
from agent.collector.metrics import render
from agent.collector.openapi import document
from agent.collector.params import whole_number
from agent.collector.payload import parse_report
from agent.collector.queries import HostFilter, Listing, Page
from agent.collector.report_times import CLOCK_AHEAD_WARN_S, seconds_ahead

if TYPE_CHECKING:
    from agent.collector.context import Collector

MAX_LIMIT = 1000
log = logging.getLogger(__name__)


def _collector(request: Request) -> Collector:
    collector: Collector = request.app.state.collector
    return collector


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequestError("Content-Length: expected a whole number of bytes")
        if len(declared) > 18 or int(declared) > limit:
            raise TooLargeError(f"body of {declared[:20]} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def post_report(request: Request) -> Response:
    """Store one report: 201 created (after the commit), 200 duplicate run_id, 4xx with a reason."""
    collector, started = _collector(request), time.perf_counter()
    try:
        principal = await collector.db(ingest_principal, collector.engine, request)
        raw = await _read_body(request, collector.settings.max_body_bytes)
        report = parse_report(raw, collector.settings.payload)
        store.check_storable(report)  # before the host check, so the 422 names the field
        if report.host != principal.name:
            raise ForbiddenError(f"this token is bound to host {principal.name!r}, not {report.host!r}")
        if collector.settings.client_cert_required:
            check_client_cert(request, report.host)
        received_at = collector.now()
        created = await collector.db(store.ingest, collector.engine, report, raw,
                                     received_at=received_at, expect=collector.settings.expect)
    except Exception as e:
        result = f"rejected_{e.status}" if isinstance(e, CollectorError) else "error"
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
    return JSONResponse({"run_id": report.run_id, "result": result}, status_code=201 if created else 200)


async def _reader(request: Request) -> Collector:
    collector = _collector(request)
    await collector.db(reader_principal, collector.engine, request, collector.settings.proxy)
    return collector


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    value = whole_number(text)
    if value is None or not low <= value <= high:
        raise BadRequestError(f"{name}: expected a whole number from {low} to {high}")
    return value


def _bool_param(request: Request, name: str) -> bool | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise BadRequestError(f"{name}: expected true or false")
    return text.lower() in ("true", "1", "yes")


def _list_param(request: Request, name: str) -> tuple[str, ...]:
    return tuple(v for raw in request.query_params.getlist(name) for v in raw.split(",") if v)


def _page(request: Request) -> Page:
    return Page(limit=_int_param(request, "limit", 100, 1, MAX_LIMIT),
                offset=_int_param(request, "offset", 0, 0, 10**9))


def _listing(listing: Listing, page: Page, **extra: Any) -> dict[str, Any]:
    following = page.offset + page.limit
    return {**extra, "items": listing.items, "total": listing.total, "limit": page.limit,
            "offset": page.offset, "next_offset": following if following < listing.total else None}


def _stale_before(collector: Collector) -> Any:
    return queries.stale_cutoff(collector.now(), collector.settings.stale_grace_s)


async def list_hosts(request: Request) -> Response:
    collector, page = await _reader(request), _page(request)
    order = request.query_params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise BadRequestError("order: expected asc or desc")
    q = request.query_params
    f = HostFilter(status=_list_param(request, "status"), role=q.get("role"), commit=q.get("commit"),
                   stale=_bool_param(request, "stale"), search=q.get("q"), sort=q.get("sort", "host"),
                   descending=order == "desc")
    after, before = queries.seen_window(q.get("seen"), collector.now())
    f = replace(f, seen_after=after, seen_before=before)
    stale_before = _stale_before(collector)
    listing = await collector.db(queries.list_hosts, collector.engine, f, page, stale_before=stale_before)
    counts = await collector.db(queries.status_counts, collector.engine, stale_before=stale_before)
    return JSONResponse(_listing(listing, page, counts=counts))


async def get_host(request: Request) -> Response:
    collector = await _reader(request)
    host = await collector.db(queries.get_host, collector.engine, request.path_params["host"],
                                   stale_before=_stale_before(collector))
    return JSONResponse(host)


async def host_runs(request: Request) -> Response:
    collector, page = await _reader(request), _page(request)
    listing = await collector.db(queries.host_runs, collector.engine, request.path_params["host"], page,
                                      status=_list_param(request, "status"))
    return JSONResponse(_listing(listing, page))


async def get_run(request: Request) -> Response:
    collector = await _reader(request)
    run = await collector.db(queries.get_run, collector.engine, request.path_params["run_id"])
    return JSONResponse(run)


async def drift(request: Request) -> Response:
    """Current drift: grouped by task (group=task, default) or one row per host and task (group=host)."""
    collector, page = await _reader(request), _page(request)
    q = request.query_params
    group = q.get("group", "task")
    if group not in ("task", "host"):
        raise BadRequestError("group: expected task or host")
    filters = {k: q.get(k) for k in ("task", "kind", "role", "host")}
    query = queries.drift_by_task if group == "task" else queries.drift_items_now
    listing = await collector.db(query, collector.engine, page, **filters)
    return JSONResponse(_listing(listing, page, group=group))


async def commit_rollout(request: Request) -> Response:
    collector, page = await _reader(request), _page(request)
    reached = request.query_params.get("hosts", "running")
    if reached not in ("running", "not_reached"):
        raise BadRequestError("hosts: expected running or not_reached")
    result = await collector.db(queries.commit_rollout, collector.engine, request.path_params["sha"], page,
        stale_before=_stale_before(collector), reached=reached == "running")
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
    return JSONResponse({"status": "ok", "database": "ok"})


async def metrics(request: Request) -> Response:
    collector = _collector(request)
    if not collector.settings.public_metrics:
        await _reader(request)
    fleet = await collector.db(queries.fleet_counts, collector.engine,
                                    stale_before=_stale_before(collector))
    return PlainTextResponse(render(collector.metrics, fleet), media_type="text/plain; version=0.0.4")



async def list_runs(request: Request) -> Response:
    """Runs across the fleet, newest first (`status`, `commit` prefix); a host's own: /hosts/{host}/runs."""
    collector, page = await _reader(request), _page(request)
    listing = await collector.db(queries.recent_runs, collector.engine, page,
                                 status=_list_param(request, "status"),
                                 commit=request.query_params.get("commit") or None)
    return JSONResponse(_listing(listing, page))


async def list_commits(request: Request) -> Response:
    """Commits some host reported, newest first, with how many hosts run it and how many converged."""
    collector, page = await _reader(request), _page(request)
    listing = await collector.db(queries.list_commits, collector.engine, page)
    return JSONResponse(_listing(listing, page))
