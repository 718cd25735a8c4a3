"""The collectors' leader (agent.collector.leader) and the notifier's claims under it, on SQLite and
PostgreSQL, in-process; tests/collector/test_scale_out.py runs the same across real processes behind
haproxy and kills the leader."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import anyio
import pytest
from sqlalchemy import Engine, select, text

from agent.collector import notify_store, store
from agent.collector.alerts import Webhook, make_alert
from agent.collector.context import Collector, CollectorSettings
from agent.collector.leader import Leader, prune_loop
from agent.collector.tables import runs, webhook_deliveries
from agent.report import to_json
from tests.collector.conftest import Clock
from tests.factory import BASE_TIME, make_report

HOOK = Webhook("http://127.0.0.1:9/hook")


def _queue(engine: Engine, host: str) -> notify_store.Delivery:
    alert = make_alert("failing", None, host * 4, [(host, BASE_TIME)])  # a group (commit) of its own
    notify_store.queue_alerts(engine, [alert], (HOOK,), now=BASE_TIME)
    (delivery,) = [d for d in notify_store.due(engine, now=BASE_TIME) if host in d.body]
    return delivery


def _status(engine: Engine, delivery: notify_store.Delivery) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(webhook_deliveries.c.status)
                                .where(webhook_deliveries.c.id == delivery.id)).scalar_one())


def test_one_leader_at_a_time_and_leading_says_so(engine: Engine) -> None:
    first, second = Leader(engine), Leader(engine)
    assert first.leading is None and second.leading is None  # never tried: no leader-only work
    assert first.try_lead() and first.try_lead() and first.leading
    assert not second.try_lead() and second.leading is False
    first.release()  # (it lets go: the lock is free when release() returns)
    assert first.leading is False
    assert second.try_lead() and second.leading
    assert not first.try_lead()
    second.release()


def test_a_delivery_is_claimed_once_and_resumed_by_the_next_leader(engine: Engine) -> None:
    delivery = _queue(engine, "web01")
    assert notify_store.claim(engine, delivery)
    assert _status(engine, delivery) == "sending"
    assert not notify_store.claim(engine, delivery)  # a second sender gets nothing
    assert notify_store.due(engine, now=BASE_TIME + timedelta(hours=1)) == []  # nor does a later scan
    # the claimer died mid-send: the next leader makes it due again, under the same id
    assert notify_store.resume_sending(engine, now=BASE_TIME) == 1
    (again,) = notify_store.due(engine, now=BASE_TIME)
    assert again.id == delivery.id and _status(engine, again) == "pending"
    assert notify_store.claim(engine, again)
    assert notify_store.mark(engine, again, error="HTTP 500: down", now=BASE_TIME) == "pending"
    assert _status(engine, again) == "pending"  # a failed attempt goes back to pending for its retry
    (retry,) = notify_store.due(engine, now=BASE_TIME + timedelta(minutes=1))
    assert notify_store.claim(engine, retry)
    assert notify_store.mark(engine, retry, error=None, now=BASE_TIME) == "delivered"


def test_a_leader_whose_lock_session_died_cannot_claim(engine: Engine) -> None:
    """PostgreSQL: the fence is the lock itself, so a process that lost its lock session (the server cut
    it) claims nothing, even before it notices; its next try finds out and takes the lock again."""
    if engine.dialect.name != "postgresql":
        assert Leader(engine).fence() is None  # SQLite: the flock is only ever lost with the process
        return
    leader = Leader(engine)
    assert leader.try_lead()
    fence = leader.fence()
    assert fence is not None
    first, second = _queue(engine, "web01"), _queue(engine, "web02")
    assert notify_store.claim(engine, first, fence=fence)
    with engine.connect() as conn:  # the server ends the leader's lock session (as when it dies)
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": leader._pid})
        conn.commit()
    assert not notify_store.claim(engine, second, fence=fence)
    assert _status(engine, second) == "pending"
    assert leader.try_lead()  # noticed, and the lock was free: it leads again, on a new session
    new_fence = leader.fence()
    assert new_fence is not None
    assert notify_store.claim(engine, second, fence=new_fence)
    leader.release()


def test_prune_runs_in_the_leader_only(engine: Engine, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    old = make_report("web01", finished_at=BASE_TIME - timedelta(days=40))
    new = make_report("web01", finished_at=BASE_TIME)
    for report in (old, new):
        store.ingest(engine, report, to_json(report).encode(), received_at=report.finished_at)
    settings = CollectorSettings(prune_older_than_s=30 * 86400.0, notify_interval_s=0.05)
    one, two = Collector(engine, settings, now=clock), Collector(engine, settings, now=clock)

    async def both() -> None:
        with anyio.move_on_after(0.5):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(prune_loop, one, 30 * 86400.0)
                tasks.start_soon(prune_loop, two, 30 * 86400.0)

    with caplog.at_level(logging.INFO, logger="agent.collector.leader"):
        asyncio.run(both())
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("prune:")] == [
        f"prune: 1 run(s) finished before {(BASE_TIME - timedelta(days=30)).isoformat()}"]
    assert [one.leader.leading, two.leader.leading].count(True) == 1
    with engine.connect() as conn:
        assert list(conn.execute(select(runs.c.run_id)).scalars()) == [new.run_id]
    one.leader.release()
    two.leader.release()
