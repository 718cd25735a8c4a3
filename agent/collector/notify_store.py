"""The SQL side of notifications: find hosts whose alert state changed, record the new states together
with the deliveries they cause (one transaction: no alert lost, none repeated), and track deliveries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, select, update

from agent.collector import db, store
from agent.collector.alerts import Alert, AlertState, HostChange, Webhook, classify, payload, summary
from agent.collector.queries import Listing, Page
from agent.collector.tables import alert_states, drift_items, hosts, webhook_deliveries
from agent.report import format_time

MAX_ATTEMPTS = 8
BACKOFF_S = (5, 15, 60, 300, 900, 1800, 3600)


@dataclass(frozen=True)
class Delivery:
    id: int
    url: str
    body: str
    attempts: int


def scan(engine: Engine, *, stale_before: datetime) -> list[HostChange]:
    """Hosts whose current alert state differs from the one last recorded for them."""
    query = (select(hosts.c.host, hosts.c.status, hosts.c.due_at, hosts.c.last_finished_at, hosts.c.commit,
                    hosts.c.last_run_id, alert_states.c.state)
             .select_from(hosts.outerjoin(alert_states, alert_states.c.host == hosts.c.host)))
    changed: list[tuple[Any, AlertState]] = []
    with engine.connect() as conn:
        for row in conn.execute(query):
            after = classify(row.status, row.due_at < stale_before)
            if row.state is None or after is not AlertState(row.state):
                changed.append((row, after))
        tasks = _first_tasks(conn, [r.last_run_id for r, after in changed if after is AlertState.DRIFTING])
    return [HostChange(r.host, AlertState(r.state) if r.state else None, after,
                       r.due_at if after is AlertState.STALE else r.last_finished_at, r.commit,
                       tasks.get(r.last_run_id)) for r, after in changed]


def _first_tasks(conn: Any, run_ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(run_ids), 500):
        query = (select(drift_items.c.run_id, func.min(drift_items.c.task))
                 .where(drift_items.c.run_id.in_(run_ids[start:start + 500])).group_by(drift_items.c.run_id))
        found.update({run_id: task for run_id, task in conn.execute(query)})
    return found


def record(engine: Engine, changes: list[HostChange], alerts: list[Alert], webhooks: tuple[Webhook, ...],
           *, now: datetime, base_url: str | None = None) -> None:
    """Store the hosts' new states and queue one delivery per alert and webhook, atomically."""
    if not changes:
        return
    with db.write(engine) as conn:
        names = [c.host for c in changes]
        for start in range(0, len(names), 500):
            conn.execute(delete(alert_states).where(alert_states.c.host.in_(names[start:start + 500])))
        conn.execute(alert_states.insert(), [{"host": c.host, "state": c.after.value, "since": c.since}
                                             for c in changes])
        for alert in alerts:
            for hook in webhooks:
                store._insert_ignore(conn, webhook_deliveries, {
                    "url": hook.url, "kind": hook.kind.value, "fingerprint": alert.fingerprint,
                    "alert_kind": alert.kind, "summary": summary(alert),
                    "payload": json.dumps(payload(alert, hook.kind, base_url)), "status": "pending",
                    "attempts": 0, "created_at": now, "next_attempt_at": now})


def due(engine: Engine, *, now: datetime, limit: int = 50) -> list[Delivery]:
    query = (select(webhook_deliveries.c.id, webhook_deliveries.c.url, webhook_deliveries.c.payload,
                    webhook_deliveries.c.attempts)
             .where(webhook_deliveries.c.status == "pending", webhook_deliveries.c.next_attempt_at <= now)
             .order_by(webhook_deliveries.c.id).limit(limit))
    with engine.connect() as conn:
        return [Delivery(r.id, r.url, r.payload, r.attempts) for r in conn.execute(query)]


def mark(engine: Engine, delivery: Delivery, *, error: str | None, now: datetime) -> str:
    """Record one attempt: delivered, or retried later with backoff, or failed for good. Returns status."""
    attempts = delivery.attempts + 1
    values: dict[str, Any] = {"attempts": attempts, "last_error": error}
    if error is None:
        values.update(status="delivered", delivered_at=now, next_attempt_at=None)
    elif attempts >= MAX_ATTEMPTS:
        values.update(status="failed", next_attempt_at=None)
    else:
        wait_s = BACKOFF_S[min(attempts - 1, len(BACKOFF_S) - 1)]
        values.update(next_attempt_at=now + timedelta(seconds=wait_s))
    with db.write(engine) as conn:
        this = webhook_deliveries.c.id == delivery.id
        conn.execute(update(webhook_deliveries).where(this).values(**values))
    return str(values.get("status", "pending"))


def list_deliveries(engine: Engine, page: Page, *, status: str | None = None) -> Listing:
    where = [webhook_deliveries.c.status == status] if status else []
    columns = [c for c in webhook_deliveries.c if c.name != "payload"]
    query = (select(*columns).where(*where).order_by(webhook_deliveries.c.id.desc())
             .limit(page.limit).offset(page.offset))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        total = conn.execute(select(func.count()).select_from(webhook_deliveries).where(*where)).scalar_one()
    items = [{k: format_time(v) if isinstance(v, datetime) else v for k, v in r._mapping.items()}
             for r in rows]
    return Listing(items, total)


def delivery_counts(engine: Engine) -> dict[str, int]:
    query = select(webhook_deliveries.c.status, func.count()).group_by(webhook_deliveries.c.status)
    with engine.connect() as conn:
        return {status: int(n) for status, n in conn.execute(query)}
