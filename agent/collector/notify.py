"""Webhook notifications: a loop scans for host state changes, queues grouped alerts (notify_store) and
delivers due ones with retries. Every collector process runs the loop, but only the leader
(agent.collector.leader) scans and delivers: the others try for the lead every `--notify-interval`. The
leader claims each delivery in the database before sending it (under its lock's fence), and a new leader
resends what a dead one left claimed; every request carries `X-Gitops-Delivery: <id>` (the same id on a
resend) so a receiver can drop the one repeat a leader killed mid-send can cause."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING

import anyio
import httpx
from starlette.applications import Starlette

from agent.collector import notify_store, queries, review_notify, review_store
from agent.collector.alerts import Alert, group, mask_url, scrub_url

if TYPE_CHECKING:
    from agent.collector.context import Collector

log = logging.getLogger(__name__)


DELIVERY_HEADER = "X-Gitops-Delivery"


class Notifier:
    def __init__(self, collector: Collector, client: httpx.AsyncClient) -> None:
        self.collector = collector
        self.client = client
        self.leading = False

    async def lead(self) -> bool:
        """Whether this process leads (trying for the lead when it does not); on taking it, deliveries a
        former leader left claimed are made due again."""
        c = self.collector
        leading = await anyio.to_thread.run_sync(c.leader.try_lead)
        if leading and not self.leading:
            resumed = await c.db(notify_store.resume_sending, c.engine, now=c.now())
            log.info("notify: this process leads%s",
                     f"; {resumed} delivery(ies) a former leader left unfinished go again" if resumed else "")
        elif self.leading and not leading:
            log.warning("notify: this process no longer leads")
        self.leading = leading
        return leading

    async def run_once(self) -> None:
        """One scan: record state changes (queueing alerts), then deliver what is due."""
        c = self.collector
        now = c.now()
        stale_before = queries.stale_cutoff(now, c.settings.stale_grace_s)
        changes = await c.db(notify_store.scan, c.engine, stale_before=stale_before)
        if changes:
            alerts = group(changes)
            public = c.settings.public_urls[0] if c.settings.public_urls else None  # links in messages
            await c.db(notify_store.record, c.engine, changes, alerts, c.settings.webhooks, now=now,
                       base_url=public, grouping=c.settings.alert_grouping)
            log.info("notify: %d host state change(s), %d alert(s)", len(changes), len(alerts))
        await self.review(now)
        await self.deliver()

    async def review(self, now: datetime) -> None:
        """The drift review's tick: write down expired exceptions (their items reopen, audited), queue new
        corrective drift (review_notify) and the exception alerts due (expiring within 7 days, expired),
        once each (docs/drift-review.md)."""
        c = self.collector
        await c.db(review_store.expire_exceptions, c.engine, now=now)
        public = c.settings.public_urls[0] if c.settings.public_urls else None
        new = await c.db(review_notify.queue_new_corrective, c.engine, c.settings.webhooks, now=now,
                         base_url=public)
        if new:
            log.info("notify: %d new corrective drift alert(s)", len(new))
        notices = await c.db(review_store.exception_notices, c.engine, now=now)
        if not notices:
            return
        alerts = [Alert(n.kind, n.label, None, n.hosts, now, f"{n.kind}-{n.exception_id}",
                        (now,) * len(n.hosts)) for n in notices]
        await c.db(notify_store.queue_alerts, c.engine, alerts, c.settings.webhooks, now=now)
        await c.db(review_store.mark_notified, c.engine, notices, now=now)
        log.info("notify: %d drift exception alert(s)", len(notices))

    async def deliver(self) -> None:
        c = self.collector
        for delivery in await c.db(notify_store.due, c.engine, now=c.now()):
            if not await c.db(notify_store.claim, c.engine, delivery, fence=c.leader.fence()):
                continue  # merged away, or this process lost the lead (its fence fell)
            error = await self._post(delivery)
            status = await c.db(notify_store.mark, c.engine, delivery, error=error, now=c.now())
            c.metrics.webhooks[status] = c.metrics.webhooks.get(status, 0) + 1
            if error:
                log.warning("webhook %s: attempt %d failed: %s", mask_url(delivery.url),
                            delivery.attempts + 1, error)

    async def _post(self, delivery: notify_store.Delivery) -> str | None:
        """None when delivered, else the error (with the URL masked: readers see it on /webhooks)."""
        try:
            response = await self.client.post(delivery.url, content=delivery.body,
                                              headers={"Content-Type": "application/json",
                                                       DELIVERY_HEADER: str(delivery.id)})
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"
        else:
            if response.is_success:
                return None
            error = f"HTTP {response.status_code}: {response.text[:200]}"
        return scrub_url(error, delivery.url)[:500]

    async def loop(self) -> None:
        while True:
            try:
                if await self.lead():
                    await self.run_once()
            except Exception:  # the loop outlives a failed scan (database down): retried next time
                # a delivery claimed before the failure may be left `sending`: the next round that leads
                # makes it due again, as after a change of leader (nothing of ours is in flight then)
                self.leading = False
                self.collector.metrics.db_errors += 1
                log.exception("notify: scan failed")
            await anyio.sleep(self.collector.settings.notify_interval_s)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Runs the notifier beside the app while webhooks are configured."""
    collector: Collector = app.state.collector
    if not collector.settings.webhooks:
        yield
        return
    async with httpx.AsyncClient(timeout=10.0) as client, anyio.create_task_group() as tasks:
        tasks.start_soon(Notifier(collector, client).loop)
        yield
        tasks.cancel_scope.cancel()
