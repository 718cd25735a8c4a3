"""The `new_corrective` alert: drift of kind corrective that a check saw for the first time and that no
exception accepts (docs/drift-review.md section 4), sent through the webhooks like the other alerts.

The notifier's tick (notify.Notifier.review) calls `queue_new_corrective`: it reads the `review_items` rows
added since the cursor `review_cursors["new_corrective"]` (ids only grow), keeps the episodes that opened
as corrective and are not accepted, queues one alert per (role, task) with their hosts, and moves the
cursor, all in one transaction that holds the cursor's row (PostgreSQL: FOR UPDATE; SQLite: one writer),
so two collector processes never send one episode twice. The first tick after an upgrade starts the cursor
at the newest item: drift that predates the feature (or a backfill) is not announced as new.
Episodes a `corrected` run opened already resolved count too (the agent fixed it, and people are told).
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Engine, func, select, update

from agent.collector import db, notify_store
from agent.collector.alerts import Alert, Grouping, Webhook, make_alert
from agent.collector.tables import review_cursors, review_items

CURSOR = "new_corrective"
KIND = "new_corrective"  # webhook_deliveries.alert_kind holds 16 characters
BATCH = 5000


def queue_new_corrective(engine: Engine, webhooks: tuple[Webhook, ...], *, now: datetime,
                         base_url: str | None = None) -> list[Alert]:
    """Queue the alerts for new corrective drift since the last call; returns them (empty when none)."""
    ri = review_items.c
    with db.write(engine) as conn:
        last = conn.execute(select(review_cursors.c.last_id).where(review_cursors.c.name == CURSOR)
                            .with_for_update()).scalar_one_or_none()
        if last is None:
            newest = conn.execute(select(func.coalesce(func.max(ri.id), 0))).scalar_one()
            conn.execute(review_cursors.insert().values(name=CURSOR, last_id=newest))
            return []
        rows = conn.execute(select(ri.id, ri.host, ri.role, ri.task, ri.kinds, ri.first_seen_at,
                                   ri.accepted_by).where(ri.id > last).order_by(ri.id).limit(BATCH)).all()
        if not rows:
            return []
        members: dict[tuple[str, str], list[tuple[str, datetime]]] = {}
        for r in rows:
            kinds = json.loads(r.kinds)
            if kinds and kinds[0][0] == "corrective" and r.accepted_by is None:
                members.setdefault((r.role, r.task), []).append((r.host, r.first_seen_at))
        alerts = [make_alert(KIND, task, None, hosts) for (_, task), hosts in sorted(members.items())]
        for alert in alerts:
            for hook in webhooks:
                notify_store._queue(conn, hook, alert, now=now, base_url=base_url,
                                    grouping=Grouping(wait_s=0.0, interval_s=0.0))
        conn.execute(update(review_cursors).where(review_cursors.c.name == CURSOR)
                     .values(last_id=rows[-1].id))
    return alerts
