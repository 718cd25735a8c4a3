"""Webhook delivery status: the page /webhooks and its JSON twin /api/v1/webhooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.collector import notify_store
from agent.collector.auth import reader_principal
from agent.collector.errors import BadRequestError
from agent.collector.ui import common, page_params, ui_page
from agent.collector.ui_render import page

if TYPE_CHECKING:
    from agent.collector.app import Collector

STATUSES = ("pending", "delivered", "failed")


def _status(request: Request) -> str | None:
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequestError(f"status: expected one of {', '.join(STATUSES)}")
    return status


@ui_page
async def deliveries_page(request: Request, collector: Collector) -> Response:
    pg, status = page_params(request), _status(request)
    listing = await collector.db(notify_store.list_deliveries, collector.engine, pg, status=status)
    counts = await collector.db(notify_store.delivery_counts, collector.engine)
    return page("webhooks.html", deliveries=listing, counts=counts, page=pg, status=status,
                webhooks=collector.settings.webhooks, api="/api/v1/webhooks", **common(request, collector))


async def deliveries_json(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    await collector.db(reader_principal, collector.engine, request, collector.settings.proxy)
    pg, status = page_params(request), _status(request)
    listing = await collector.db(notify_store.list_deliveries, collector.engine, pg, status=status)
    counts = await collector.db(notify_store.delivery_counts, collector.engine)
    hooks = [{"url": w.url, "kind": w.kind.value} for w in collector.settings.webhooks]
    return JSONResponse({"webhooks": hooks,
                         "counts": counts, "items": listing.items, "total": listing.total,
                         "limit": pg.limit, "offset": pg.offset})


PAGE_ROUTE = Route("/webhooks", deliveries_page)
API_ROUTE = Route("/api/v1/webhooks", deliveries_json)
