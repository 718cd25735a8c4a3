"""The SQL side of notifications: find hosts whose alert state changed, record the new states together
with the deliveries they cause (one transaction: no alert lost, none repeated), and track deliveries.

Deliveries of one alert group (alerts.group_key) are held and merged (alerts.Grouping): a new group's
delivery waits `wait_s`; until it is sent, later alerts of the group join it; after it, the next one
waits until `interval_s` after the previous one was queued. A delivery that gained hosts while another
process was sending it is marked delivered only if what was sent is what it holds; else it goes again.

Across collector processes (docs/scale.md): only the leader delivers, and it claims each delivery in the
database before sending it (`claim`: pending -> sending, under the leader's fence), so no two processes
ever send one delivery. A delivery a dead leader left `sending` goes again when the next leader takes over
(`resume_sending`), with the same id in its `X-Gitops-Delivery` header, so a receiver that remembers ids
sees it once even when the old leader died after the receiver got it and before the row said so."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, TextClause, delete, func, select, update

from agent.collector import db, store
from agent.collector.alerts import (
    Alert,
    AlertState,
    Grouping,
    HostChange,
    Webhook,
    alert_state,
    group_key,
    make_alert,
    merge,
    payload,
    summary,
)
from agent.collector.queries import Listing, Page
from agent.collector.tables import alert_states, drift_items, hosts, webhook_deliveries
from agent.report import format_time, parse_time

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
            after = alert_state(row.status, row.due_at < stale_before)
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
           *, now: datetime, base_url: str | None = None, grouping: Grouping | None = None) -> None:
    """Store the hosts' new states and queue (or merge into a held delivery) each alert for each webhook,
    atomically. Without `grouping`, every alert is queued to go at once."""
    if not changes:
        return
    grouping = grouping or Grouping(wait_s=0.0, interval_s=0.0)
    with db.write(engine) as conn:
        names = [c.host for c in changes]
        for start in range(0, len(names), 500):
            conn.execute(delete(alert_states).where(alert_states.c.host.in_(names[start:start + 500])))
        conn.execute(alert_states.insert(), [{"host": c.host, "state": c.after.value, "since": c.since}
                                             for c in changes])
        for alert in alerts:
            for hook in webhooks:
                _queue(conn, hook, alert, now=now, grouping=grouping, base_url=base_url)


def queue_alerts(engine: Engine, alerts: list[Alert], webhooks: tuple[Webhook, ...], *, now: datetime,
                 base_url: str | None = None) -> None:
    """Queue alerts that are not host state changes (the drift review's exception alerts) to go at once;
    the (url, fingerprint) unique index keeps each from repeating."""
    with db.write(engine) as conn:
        for alert in alerts:
            for hook in webhooks:
                _queue(conn, hook, alert, now=now, grouping=Grouping(wait_s=0.0, interval_s=0.0),
                       base_url=base_url)


def _members(alert: Alert) -> str:
    return json.dumps([[h, format_time(t)] for h, t in zip(alert.hosts, alert.since, strict=True)])


def _values(hook: Webhook, alert: Alert, base_url: str | None) -> dict[str, Any]:
    return {"fingerprint": alert.fingerprint, "summary": summary(alert), "members": _members(alert),
            "payload": json.dumps(payload(alert, hook.kind, base_url))}


def _queue(conn: Any, hook: Webhook, alert: Alert, *, now: datetime, grouping: Grouping,
           base_url: str | None) -> None:
    key, d = group_key(alert), webhook_deliveries.c
    ours = (d.url == hook.url, d.group_key == key)
    held = conn.execute(select(d.id, d.members).where(
        *ours, d.status == "pending", d.attempts == 0,
        d.next_attempt_at >= now).order_by(d.id.desc()).limit(1)).first()
    if held is not None:
        before = make_alert(alert.kind, alert.task, alert.commit,
                            [(h, parse_time(t)) for h, t in json.loads(held.members)])
        merged = merge(before, alert)
        conn.execute(update(webhook_deliveries).where(d.id == held.id)
                     .values(**_values(hook, merged, base_url)))
        return
    due_at = now + timedelta(seconds=grouping.wait_s)
    previous = conn.execute(select(func.max(d.created_at)).where(*ours)).scalar_one()
    if previous is not None:
        due_at = max(due_at, previous + timedelta(seconds=grouping.interval_s))
    store._insert_ignore(conn, webhook_deliveries, {
        "url": hook.url, "kind": hook.kind.value, "alert_kind": alert.kind, "group_key": key,
        "status": "pending", "attempts": 0, "created_at": now, "next_attempt_at": due_at,
        **_values(hook, alert, base_url)})


def due(engine: Engine, *, now: datetime, limit: int = 50) -> list[Delivery]:
    query = (select(webhook_deliveries.c.id, webhook_deliveries.c.url, webhook_deliveries.c.payload,
                    webhook_deliveries.c.attempts)
             .where(webhook_deliveries.c.status == "pending", webhook_deliveries.c.next_attempt_at <= now)
             .order_by(webhook_deliveries.c.id).limit(limit))
    with engine.connect() as conn:
        return [Delivery(r.id, r.url, r.payload, r.attempts) for r in conn.execute(query)]


def claim(engine: Engine, delivery: Delivery, *, fence: TextClause | None = None) -> bool:
    """Take `delivery` for sending (pending -> sending) in one statement; False when it is no longer
    pending (another process took it, or it was merged away) or `fence` (the leader's, leader.fence()) is
    false: this process lost the lead."""
    d = webhook_deliveries.c
    claim_ = (update(webhook_deliveries).values(status="sending")
              .where(d.id == delivery.id, d.status == "pending", d.attempts == delivery.attempts))
    if fence is not None:
        claim_ = claim_.where(fence)
    with db.write(engine) as conn:
        return bool(conn.execute(claim_).rowcount)


def resume_sending(engine: Engine, *, now: datetime) -> int:
    """On taking the lead: deliveries a former leader claimed and never marked (it died, or lost the lead,
    mid-send) become pending and due now; returns how many. Only the leader calls this, so a `sending` row
    is never one of a live leader's."""
    with db.write(engine) as conn:
        return int(conn.execute(update(webhook_deliveries).where(webhook_deliveries.c.status == "sending")
                                .values(status="pending", next_attempt_at=now)).rowcount)


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
    values.setdefault("status", "pending")  # a claimed (sending) row goes back to pending for its retry
    with db.write(engine) as conn:
        this = webhook_deliveries.c.id == delivery.id
        if error is None:  # delivered what was read: unless hosts joined it meanwhile (another process)
            sent = conn.execute(update(webhook_deliveries).where(
                this, webhook_deliveries.c.payload == delivery.body).values(**values)).rowcount
            if not sent:  # then it goes again, whole (a repeat rather than a loss)
                conn.execute(update(webhook_deliveries).where(this).values(status="pending",
                                                                             next_attempt_at=now))
        else:
            conn.execute(update(webhook_deliveries).where(this).values(**values))
    return str(values["status"])


def list_deliveries(engine: Engine, page: Page, *, status: str | None = None) -> Listing:
    where = [webhook_deliveries.c.status == status] if status else []
    columns = [c for c in webhook_deliveries.c if c.name not in ("payload", "members")]
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
