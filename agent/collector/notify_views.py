"""Webhook delivery status: the page /webhooks and its JSON twin /api/v1/webhooks.

Readers never see a webhook's URL in full (a Slack URL is a credential): each shows as its scheme and
host, numbered in the order `serve` was given them ("#2 https://hooks.slack.example/…")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.collector import notify_store, params
from agent.collector.alerts import Webhook, WebhookKind, mask_url
from agent.collector.auth import reader_principal
from agent.collector.queries import Listing
from agent.collector.ui import common, page_params, ui_page
from agent.collector.ui_render import render_page

if TYPE_CHECKING:
    from agent.collector.context import Collector

@dataclass(frozen=True)
class ShownWebhook:
    """A configured webhook as readers see it."""

    number: int
    url: str  # masked
    kind: WebhookKind


def shown_webhooks(webhooks: tuple[Webhook, ...]) -> list[ShownWebhook]:
    return [ShownWebhook(i, f"#{i} {mask_url(w.url)}", w.kind) for i, w in enumerate(webhooks, 1)]


def _masked_deliveries(listing: Listing, webhooks: tuple[Webhook, ...]) -> Listing:
    """The deliveries with each URL replaced by its masked, numbered form (or "no longer configured")."""
    numbers = {w.url: i for i, w in enumerate(webhooks, 1)}
    items = []
    for item in listing.items:
        number = numbers.get(item["url"])
        masked = mask_url(item["url"])
        shown = f"#{number} {masked}" if number else f"{masked} (not configured now)"
        items.append({**item, "url": shown, "webhook": number})
    return Listing(items, listing.total)


@ui_page
async def deliveries_page(request: Request, collector: Collector) -> Response:
    pg, status = page_params(request), params.delivery_status(request.query_params)
    listing = await collector.db(notify_store.list_deliveries, collector.engine, pg, status=status)
    counts = await collector.db(notify_store.delivery_counts, collector.engine)
    hooks = collector.settings.webhooks
    return render_page("webhooks.html", deliveries=_masked_deliveries(listing, hooks), counts=counts, page=pg,
                       status=status, webhooks=shown_webhooks(hooks), api="/api/v1/webhooks",
                       **common(request, collector))


async def deliveries_json(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    await collector.db(reader_principal, collector.engine, request, collector.settings.proxy)
    pg, status = params.page(request.query_params), params.delivery_status(request.query_params)
    listing = await collector.db(notify_store.list_deliveries, collector.engine, pg, status=status)
    listing = _masked_deliveries(listing, collector.settings.webhooks)
    counts = await collector.db(notify_store.delivery_counts, collector.engine)
    hooks = [{"webhook": w.number, "url": w.url, "kind": w.kind.value}
             for w in shown_webhooks(collector.settings.webhooks)]
    return JSONResponse({"webhooks": hooks,
                         "counts": counts, "items": listing.items, "total": listing.total,
                         "limit": pg.limit, "offset": pg.offset})


PAGE_ROUTE = Route("/webhooks", deliveries_page)
API_ROUTE = Route("/api/v1/webhooks", deliveries_json)
