"""Drift items for hosts that last reported before the drift review existed (migration 0007).

Items are kept at ingest (review_store.record_report), so a host whose last report came before the
upgrade would show no current drift until its next report. `backfill` replays each such host's last
stored run through the same `record_report`, as if it had just arrived (its `received_at` as the clock):
its current drift shows at once, with the age the agent reported (`first_seen_at`). `gitops-collector
migrate` runs it after the schema upgrade.

Which hosts: those with no `review_hosts` row (no complete check recorded) and no `review_items` row. A
host that reported since the upgrade has one or the other, or else its last run (partial, no drift) gives
nothing to replay: running it again changes nothing. Cost: one stored report per such host, read once.
"""

from __future__ import annotations

from sqlalchemy import Engine, exists, select

from agent.collector import db, review_store, store
from agent.collector.tables import hosts, review_hosts, review_items, runs
from agent.report import from_json

BATCH = 200


def pending_hosts(engine: Engine) -> list[str]:
    """Hosts with a stored last run but neither a complete check nor any item recorded by the review."""
    h = hosts.c
    query = select(h.host).where(~exists().where(review_hosts.c.host == h.host),
                                 ~exists().where(review_items.c.host == h.host)).order_by(h.host)
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def backfill(engine: Engine) -> int:
    """Replay the last run of every pending host (in batches of BATCH hosts, one transaction each).
    Returns how many hosts got drift items or a recorded complete check."""
    names = pending_hosts(engine)
    for start in range(0, len(names), BATCH):
        chunk = names[start:start + BATCH]
        with db.write(engine) as conn:
            query = (select(runs.c.report, runs.c.received_at)
                     .select_from(runs.join(hosts, hosts.c.last_run_id == runs.c.run_id))
                     .where(hosts.c.host.in_(chunk)))
            for blob, received_at in conn.execute(query).all():
                report = from_json(store.decompress(blob))
                review_store.record_report(conn, report, now=received_at)
    return len(names) - len(pending_hosts(engine)) if names else 0
