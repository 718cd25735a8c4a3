"""The agent's outbox and sender against a real collector process: nothing is lost, nothing doubles."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from agent.collector import store, tokens
from agent.collector.tables import runs
from agent.collector.tokens import TokenKind
from agent.outbox import Outbox
from agent.report import Status, to_json
from agent.sender import Sender
from tests.factory import BASE_TIME, make_report
from tests.live_collector import CollectorProcess, free_port


def stored_run_ids(engine):
    with engine.connect() as conn:
        return list(conn.execute(select(runs.c.run_id)).scalars())


def quick_sender(url, token, **kwargs):
    options = {"max_attempts": 2, "backoff_base_s": 0.01, "backoff_cap_s": 0.05, "timeout_s": 10}
    return Sender(url, token, **{**options, **kwargs})


@pytest.fixture
def host_token(engine):
    return tokens.create(engine, TokenKind.INGEST, "web01", now=BASE_TIME)[1]


def test_collector_down_then_up_delivers_everything_exactly_once(tmp_path, engine, db_url, host_token):
    port = free_port()
    outbox = Outbox(tmp_path / "outbox")
    reports = [make_report("web01") for _ in range(5)]
    for report in reports:
        outbox.put(report)
    with quick_sender(f"http://127.0.0.1:{port}", host_token) as sender:
        down = sender.deliver_outbox(outbox)
        assert (down.delivered, down.remaining) == (0, 5)
        assert "ConnectError" in down.error
        assert len(outbox.pending()) == 5

        process = CollectorProcess(db_url, port).start()
        try:
            up = sender.deliver_outbox(outbox)
            assert up.ok and up.delivered == 5
            assert outbox.pending() == []
            assert sender.deliver_outbox(outbox).delivered == 0
            # a crash after the collector stored a report but before the outbox forgot it:
            # re-sent, not doubled
            outbox.put(reports[0])
            again = sender.deliver_outbox(outbox)
            assert (again.duplicates, again.delivered) == (1, 0)
        finally:
            process.stop()
    assert sorted(stored_run_ids(engine)) == sorted(r.run_id for r in reports)


def _burst(sender, outbox, results):
    results.append(sender.deliver_outbox(outbox))


def test_sigkill_during_a_burst_loses_no_acknowledged_report(tmp_path, engine, db_url):
    hosts = [f"web{i:02d}" for i in range(4)]
    secrets = {h: tokens.create(engine, TokenKind.INGEST, h, now=BASE_TIME)[1] for h in hosts}
    outboxes = {h: Outbox(tmp_path / h) for h in hosts}
    all_ids: set[str] = set()
    for host in hosts:
        for _ in range(60):
            report = make_report(host)
            outboxes[host].put(report)
            all_ids.add(report.run_id)
    process = CollectorProcess(db_url).start()
    senders = {h: quick_sender(process.url, secrets[h]) for h in hosts}
    results: list = []
    threads = [threading.Thread(target=_burst, args=(senders[h], outboxes[h], results)) for h in hosts]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(len(o.pending()) for o in outboxes.values()) > len(all_ids) * 0.6:
        assert time.monotonic() < deadline, "the burst did not progress"
        time.sleep(0.01)
    process.kill()  # SIGKILL, mid-burst
    for t in threads:
        t.join(timeout=60)
    pending = {e.run_id for o in outboxes.values() for e in o.pending()}
    acknowledged = all_ids - pending
    assert acknowledged and pending, "the kill should land in the middle of the burst"
    assert all(r.error for r in results)

    process = CollectorProcess(db_url, process.port).start()
    try:
        stored = set(stored_run_ids(engine))
        assert acknowledged <= stored, f"lost {len(acknowledged - stored)} acknowledged report(s)"
        for host in hosts:
            assert senders[host].deliver_outbox(outboxes[host]).ok
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(runs)).scalar_one() == len(all_ids)
        assert set(stored_run_ids(engine)) == all_ids
    finally:
        process.stop()
        for sender in senders.values():
            sender.close()


def test_sender_from_config_with_a_real_token_file(tmp_path, engine, db_url, host_token):
    from agent.config import CollectorConfig

    token_file = tmp_path / "token"
    token_file.write_text(host_token + "\n")
    token_file.chmod(0o600)
    outbox = Outbox(tmp_path / "outbox")
    outbox.put(make_report("web01"))
    process = CollectorProcess(db_url).start()
    try:
        with Sender.from_config(CollectorConfig(process.url, token_file, None)) as sender:
            assert sender.deliver_outbox(outbox).delivered == 1
    finally:
        process.stop()


def test_a_run_id_already_stored_with_another_report_is_quarantined_not_lost(tmp_path, engine, db_url,
                                                                            host_token, caplog):
    stored = make_report("web01", status=Status.IN_SYNC)
    store.ingest(engine, stored, to_json(stored).encode(), received_at=BASE_TIME)
    outbox = Outbox(tmp_path / "outbox")
    clash = replace(make_report("web01", status=Status.FAILED), run_id=stored.run_id)
    after = make_report("web01")
    outbox.put(clash)
    outbox.put(after)
    process = CollectorProcess(db_url).start()
    try:
        with quick_sender(process.url, host_token) as sender, caplog.at_level("ERROR", logger="agent.sender"):
            result = sender.deliver_outbox(outbox)
    finally:
        process.stop()
    assert (result.quarantined, result.delivered, result.ok) == (1, 1, True)
    (q,) = outbox.quarantined()
    assert q.entry.run_id == stored.run_id and q.reason.startswith("HTTP 409: run_id")
    assert "stored one is kept" in q.reason and "collector holds another report" in caplog.text
    assert sorted(stored_run_ids(engine)) == sorted([stored.run_id, after.run_id])
