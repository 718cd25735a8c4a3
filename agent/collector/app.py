"""The collector's ASGI application: routes, authentication, limits and the one error handler.

`create_app(settings, engine)` builds everything from values; `cli serve` and the tests call it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.collector import api, notify, notify_views, ui
from agent.collector.alerts import Grouping, Webhook
from agent.collector.auth import ProxyAuth
from agent.collector.errors import CollectorError, InvalidReportError
from agent.collector.metrics import Metrics
from agent.collector.payload import PayloadLimits
from agent.collector.store import Expectations

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CollectorSettings:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    stale_grace_s: float = 600.0
    expect: Expectations = field(default_factory=Expectations)
    proxy: ProxyAuth | None = None
    public_metrics: bool = False
    db_threads: int = 8
    webhooks: tuple[Webhook, ...] = ()
    notify_interval_s: float = 15.0
    payload: PayloadLimits = field(default_factory=PayloadLimits)
    client_cert_required: bool = False
    alert_grouping: Grouping = field(default_factory=Grouping)


@dataclass
class Collector:
    """What every request handler needs; stored on `app.state.collector`."""

    engine: Engine
    settings: CollectorSettings
    metrics: Metrics = field(default_factory=Metrics)
    now: Callable[[], datetime] = utc_now
    db_limiter: anyio.CapacityLimiter | None = None

    def __post_init__(self) -> None:
        # Database calls run in worker threads; a few threads serve more requests per second than many
        # (fewer threads fighting over the GIL and the database), while waiting requests cost nothing.
        if self.db_limiter is None:
            self.db_limiter = anyio.CapacityLimiter(self.settings.db_threads)

    async def db(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking database call in the worker thread pool."""
        call = functools.partial(func, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, limiter=self.db_limiter)


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
    return _error_body("the database refused a value of this report", 422)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error_body(str(exc.detail), exc.status_code)


ROUTES = [
    Route("/api/v1/reports", api.post_report, methods=["POST"]),
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
]


def create_app(collector: Collector) -> Starlette:
    pages = [*ui.ROUTES, notify_views.PAGE_ROUTE]  # the web UI (not in the OpenAPI document)
    app = Starlette(routes=[*ROUTES, *pages], lifespan=notify.lifespan, exception_handlers={
        CollectorError: _collector_error,
        SQLAlchemyError: _database_error,
        DataError: _data_error,
        HTTPException: _http_error,
    })
    app.state.collector = collector
    return app
