"""Compliance pages, their JSON twins and the daily snapshot loop (docs/drift-review.md section 5).

Pages: `/compliance` (the fleet and every role), `/compliance/roles/{role}` (a role and its drifting
tasks); the host page and a task's drift page show their own chart (`host_panel`, `task_panels`). JSON:
`/api/v1/compliance`, `/api/v1/compliance/roles/{role}`, `/api/v1/compliance/hosts/{host}`,
`/api/v1/compliance/tasks?role=&task=` (each with `days`, 1..366, default 90), in the OpenAPI document.

Charts: compliance_charts (inline SVG, CSP unchanged). The days before today come from
`compliance_daily`, written by `snapshot_loop` (`serve` runs it every compliance_store.SNAPSHOT_S).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.collector import compliance_store as cs
from agent.collector import params
from agent.collector.auth import reader_principal
from agent.collector.compliance_charts import (
    chart,
    figure_json,
    fleet_view,
    host_view,
    percent,
    role_view,
    series_json,
    task_view,
)
from agent.collector.errors import BadRequestError
from agent.collector.ui import common, ui_page
from agent.collector.ui_render import render_page
from agent.report import format_time

if TYPE_CHECKING:
    from agent.collector.context import Collector

log = logging.getLogger(__name__)


def _days(request: Request) -> int:
    return params.number(request.query_params, "days", cs.DEFAULT_DAYS, 1, cs.MAX_DAYS)


def _no_nul(value: str, name: str) -> str:
    if "\x00" in value:
        raise BadRequestError(f"{name}: must not contain a NUL character")
    return value


def _need(request: Request, name: str) -> str:
    value = params.text(request.query_params, name)
    if not value:
        raise BadRequestError(f"{name}: required")
    return value


def _json(view: dict[str, Any], now: datetime, days: int, **scope: Any) -> dict[str, Any]:
    out = {**scope, "at": format_time(now), "days": days, **figure_json(view["figure"]),
           "series": series_json(view["series"])}
    if "roles" in view:
        out["roles"] = [{"role": r["role"], **figure_json(r["figure"]), "series": series_json(r["series"])}
                        for r in view["roles"]]
    if "tasks" in view:
        out["tasks"] = [{"task": t["task"], **figure_json(t["figure"])} for t in view["tasks"]]
    return out


# -- API ------------------------------------------------------------------------------------------------


async def _reader(request: Request) -> Collector:
    collector: Collector = request.app.state.collector
    await collector.db(reader_principal, collector.engine, request, collector.settings.proxy)
    return collector


async def api_fleet(request: Request) -> Response:
    collector = await _reader(request)
    days, now = _days(request), collector.now()
    view = await collector.db(fleet_view, collector.engine, now, days)
    return JSONResponse(_json(view, now, days, scope="fleet"))


async def api_role(request: Request) -> Response:
    collector = await _reader(request)
    role, days, now = request.path_params["role"], _days(request), collector.now()
    _no_nul(role, "role")
    view = await collector.db(role_view, collector.engine, role, now, days)
    return JSONResponse(_json(view, now, days, scope="role", role=role))


async def api_host(request: Request) -> Response:
    collector = await _reader(request)
    host, days, now = request.path_params["host"], _days(request), collector.now()
    _no_nul(host, "host")
    view = await collector.db(host_view, collector.engine, host, now, days)
    return JSONResponse(_json(view, now, days, scope="host", host=host))


async def api_task(request: Request) -> Response:
    collector = await _reader(request)
    role, task = _need(request, "role"), _need(request, "task")
    days, now = _days(request), collector.now()
    view = await collector.db(task_view, collector.engine, role, task, now, days)
    return JSONResponse(_json(view, now, days, scope="task", role=role, task=task))


# -- pages ----------------------------------------------------------------------------------------------


@ui_page
async def ui_fleet(request: Request, collector: Collector) -> Response:
    days, now = _days(request), collector.now()
    view = await collector.db(fleet_view, collector.engine, now, days)
    fleet = chart(view["series"], now=now, days=days, title="Fleet")
    roles = [{"role": r["role"], "figure": r["figure"],
              "chart": chart(r["series"], now=now, days=days, title=f"Role {r['role']}", width=160,
                             height=28)}
             for r in view["roles"]]
    return render_page("compliance.html", chart=fleet, figure=view["figure"], roles=roles, days=days,
                       percent=percent, api=f"/api/v1/compliance?days={days}", **common(request, collector))


@ui_page
async def ui_role(request: Request, collector: Collector) -> Response:
    role, days, now = request.path_params["role"], _days(request), collector.now()
    _no_nul(role, "role")
    view = await collector.db(role_view, collector.engine, role, now, days)
    return render_page("compliance_role.html", role=role, figure=view["figure"], tasks=view["tasks"],
                       chart=chart(view["series"], now=now, days=days, title=f"Role {role}"), days=days,
                       percent=percent, api=f"/api/v1/compliance/roles/{role}?days={days}",
                       **common(request, collector))


# -- the daily snapshot -----------------------------------------------------------------------------------


async def snapshot_loop(collector: Collector, every_s: float) -> None:
    """While this process leads (agent.collector.leader): rewrite today's compliance_daily rows every
    `every_s` (each write is one snapshot of the items). Leader-only because collectors sharing one
    database would otherwise delete and insert the same day's rows at once (a unique-key violation on
    PostgreSQL, seen by bench/scale_out.py); followers try for the lead every `--notify-interval`."""
    while True:
        leading = False
        try:
            leading = await anyio.to_thread.run_sync(collector.leader.try_lead)
            if leading:
                rows = await collector.db(cs.snapshot, collector.engine, collector.now())
                log.debug("compliance: %d daily row(s) written", rows)
        except Exception:  # the loop outlives a failed round (database down): retried next time
            log.exception("compliance snapshot failed")
        await anyio.sleep(every_s if leading else min(every_s, collector.settings.notify_interval_s))


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Runs the snapshot loop beside the app when `compliance_snapshot_s` is set (serve sets it)."""
    collector: Collector = app.state.collector
    every_s = collector.settings.compliance_snapshot_s
    if not every_s:
        yield
        return
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(snapshot_loop, collector, every_s)
        yield
        tasks.cancel_scope.cancel()


API_ROUTES = [
    Route("/api/v1/compliance", api_fleet),
    Route("/api/v1/compliance/roles/{role}", api_role),
    Route("/api/v1/compliance/hosts/{host}", api_host),
    Route("/api/v1/compliance/tasks", api_task),
]
PAGE_ROUTES = [
    Route("/compliance", ui_fleet),
    Route("/compliance/roles/{role}", ui_role),
]
__all__ = ["API_ROUTES", "PAGE_ROUTES", "lifespan"]
