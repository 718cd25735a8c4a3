"""The collector's ASGI application: it only wires the parts together (the API's and the UI's routes, the
notifier's lifespan, the error handlers). What the parts share (`Collector`, its settings, the clock) lives
in agent.collector.context, which they import instead of this module.

`create_app(collector)` builds the application; `cli serve` and the tests call it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agent.collector import (
    api,
    compliance_views,
    enrolment_views,
    evidence_views,
    heads_views,
    leader,
    notify,
    notify_views,
    review_views,
    rollout_api,
    ui,
    writer_process,
)
from agent.collector.context import Collector
from agent.collector.errors import CollectorError, InvalidReportError

log = logging.getLogger(__name__)

INGEST_PATH = "/api/v1/reports"


def _error_body(message: str, status: int, field: str | None = None) -> JSONResponse:
    body: dict[str, object] = {"error": message}
    if field is not None:
        body["field"] = field
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


async def _collector_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CollectorError)
    field = exc.field if isinstance(exc, InvalidReportError) else None
    return _error_body(str(exc), exc.status, field)


async def _database_error(request: Request, exc: Exception) -> Response:
    collector: Collector = request.app.state.collector
    collector.metrics.db_errors += 1
    log.error("database error on %s %s: %s", request.method, request.url.path, exc)
    return _error_body("database unavailable, retry later", 503)


async def _data_error(request: Request, exc: Exception) -> Response:
    # The database refused a value: retrying cannot help, so this is the sender's permanent 422.
    log.warning("database refused a value on %s %s: %s", request.method, request.url.path, exc)
    what = "report" if request.url.path == INGEST_PATH else "request"
    return _error_body(f"the database refused a value of this {what}", 422)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client closed the connection before its body arrived: nobody is left to answer, and it is no
    # fault of the collector's (an agent killed mid-send retries from its outbox), so one line at info.
    log.info("client went away before its body arrived: %s %s", request.method, request.url.path)
    return Response(status_code=400)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error_body(str(exc.detail), exc.status_code)


ROUTES = [
    Route(INGEST_PATH, api.post_report, methods=["POST"]),
    Route("/api/v1/hosts", api.list_hosts),
    Route("/api/v1/hosts/{host}", api.get_host),
    Route("/api/v1/hosts/{host}/runs", api.host_runs),
    Route("/api/v1/runs", api.list_runs),
    Route("/api/v1/runs/{run_id}", api.get_run),
    Route("/api/v1/drift", api.drift),
    Route("/api/v1/commits", api.list_commits),
    Route("/api/v1/commits/{sha}", api.commit_rollout),
    Route("/api/v1/openapi.json", api.openapi),
    Route("/healthz", api.healthz),
    Route("/metrics", api.metrics),
    notify_views.API_ROUTE,
    *review_views.API_ROUTES,
    *heads_views.ROUTES,
    *rollout_api.API_ROUTES,
    *enrolment_views.ROUTES,
    *compliance_views.API_ROUTES,
    *review_views.API_ACTION_ROUTES,
    *evidence_views.API_ROUTES,
]


class CollectorApp(Starlette):
    """Starlette, with one shortcut: `POST /api/v1/reports` goes straight to `api.post_report`, past the
    router and Starlette's two error middlewares, whose layers cost the serving process about a quarter
    of its CPU per report under load (bench/ingest_wrk.py --profile; docs/scale.md, section 2, "Sixth
    pass"). Its answers are the same: an exception is answered by the handler `create_app` installed for
    its class (looked up along the MRO, as Starlette does); any other, or a failure of that handler, by a
    plain 500, and then raised, so that the server logs its traceback, as Starlette's
    ServerErrorMiddleware does. Every other request, and the lifespan, goes through Starlette as built."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] != INGEST_PATH or scope["method"] != "POST"
                or scope.get("root_path")):
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        request = Request(scope, receive, send)
        try:
            try:
                response = await api.post_report(request)
            except Exception as exc:
                handler = next((self.exception_handlers[cls] for cls in type(exc).__mro__
                                if cls in self.exception_handlers), None)
                if handler is None:
                    raise
                response = await handler(request, exc)
        except Exception:  # no handler, or the handler failed
            await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            raise
        await response(scope, receive, send)


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    async with (writer_process.lifespan(app), leader.lifespan(app), notify.lifespan(app),
                heads_views.lifespan(app), compliance_views.lifespan(app)):
        yield


def create_app(collector: Collector) -> Starlette:
    # the web UI (not in the OpenAPI document)
    pages = [*review_views.PAGE_ROUTES, *ui.ROUTES, notify_views.PAGE_ROUTE]
    pages += rollout_api.PAGE_ROUTES
    pages += enrolment_views.PAGE_ROUTES
    pages += compliance_views.PAGE_ROUTES
    pages += evidence_views.PAGE_ROUTES  # the evidence export's pages (its API is in ROUTES)
    app = CollectorApp(routes=[*ROUTES, *pages], lifespan=_lifespan, exception_handlers={
        CollectorError: _collector_error,
        SQLAlchemyError: _database_error,
        DataError: _data_error,
        HTTPException: _http_error,
        ClientDisconnect: _client_gone,
    })
    app.state.collector = collector
    return app
