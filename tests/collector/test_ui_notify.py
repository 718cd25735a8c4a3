"""Webhook notifications: state changes only, grouped bursts, stable fingerprints, no repeats, retries
with visible status; delivered over HTTP to a real receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from agent.collector.alerts import (
    AlertState,
    Grouping,
    HostChange,
    Webhook,
    WebhookKind,
    alert_state,
    group,
    parse_webhook,
)
from agent.collector.context import CollectorSettings
from agent.collector.notify import Notifier
from agent.report import Status
from tests.factory import BASE_TIME, COMMIT_B, drift_item, make_report


class Receiver:
    """A real HTTP server on 127.0.0.1 that records JSON bodies; can answer 500 a number of times."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.fail_next = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.fail_next:
                    receiver.fail_next -= 1
                    self.send_response(500)
                else:
                    receiver.bodies.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def settings(receiver):
    return CollectorSettings(webhooks=(Webhook(f"{receiver.url}/generic"),
                                       Webhook(f"{receiver.url}/slack", WebhookKind.SLACK)),
                             alert_grouping=Grouping(wait_s=0, interval_s=0))  # each scan sends at once


def run_once(collector) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            await Notifier(collector, client).run_once()
    asyncio.run(go())


def change(host, after, before=None, task="nginx", commit="c1"):
    return HostChange(host, before, after, BASE_TIME, commit, task)


def test_burst_is_one_alert_with_a_stable_fingerprint():
    burst = [change(f"web{i}", AlertState.DRIFTING, AlertState.OK) for i in range(30)]
    alerts = group(burst)
    assert len(alerts) == 1 and len(alerts[0].hosts) == 30
    assert group(list(reversed(burst)))[0].fingerprint == alerts[0].fingerprint
    other = group([*burst, change("web99", AlertState.DRIFTING, task="sysctl")])
    assert len(other) == 2


@pytest.mark.parametrize(("status", "stale", "state"), [
    ("failed", False, AlertState.FAILING), ("error", False, AlertState.FAILING),
    ("drifted", False, AlertState.DRIFTING), ("in_sync", False, AlertState.OK),
    ("corrected", False, AlertState.OK), ("paused", False, AlertState.OK),
    ("failed", True, AlertState.STALE), ("in_sync", True, AlertState.STALE),
])
def test_alert_state_of_a_host(status, stale, state):
    assert alert_state(status, stale) is state


def test_only_changes_that_matter_alert():
    assert group([change("new", AlertState.OK)]) == []  # a new host that is fine: nothing to say
    assert [a.kind for a in group([change("a", AlertState.OK, AlertState.FAILING)])] == ["recovered"]
    assert [a.kind for a in group([change("a", AlertState.STALE, AlertState.OK)])] == ["stale"]


def test_parse_webhook():
    assert parse_webhook("https://hooks.test/x,slack") == Webhook("https://hooks.test/x", WebhookKind.SLACK)
    assert parse_webhook("http://127.0.0.1:9/a?b=1,2").kind is WebhookKind.JSON
    with pytest.raises(ValueError, match="expected"):
        parse_webhook("ftp://x")


def generic(receiver):
    return [b for b in receiver.bodies if "fingerprint" in b]


def test_state_changes_are_sent_once_grouped_and_recoveries_too(collector, send, clock, receiver, client,
                                                                reader):
    for host in ("web01", "web02", "web03"):
        assert send(make_report(host, status=Status.DRIFTED, commit=COMMIT_B,
                                drift=(drift_item("nginx <b>config</b>"),))).status_code == 201
    assert send(make_report("db01", status=Status.FAILED, commit=COMMIT_B)).status_code == 201
    assert send(make_report("ok01", commit=COMMIT_B)).status_code == 201
    run_once(collector)
    kinds = sorted((b["kind"], b["count"], b["task"]) for b in generic(receiver))
    assert kinds == [("drifting", 3, "nginx <b>config</b>"), ("failing", 1, None)]
    slack = [b["text"] for b in receiver.bodies if "text" in b]
    assert any("3 hosts started drifting on task 'nginx &lt;b&gt;config&lt;/b&gt;'" in t for t in slack)
    run_once(collector)
    assert len(generic(receiver)) == 2  # nothing changed: nothing sent again
    clock.now += timedelta(minutes=1)
    assert send(make_report("db01", commit=COMMIT_B, finished_at=clock.now)).status_code == 201
    run_once(collector)
    assert [(b["kind"], b["hosts"]) for b in generic(receiver)][-1] == ("recovered", ["db01"])
    clock.now += timedelta(hours=2)  # nobody reported: everyone is stale, one alert per commit
    run_once(collector)
    stale = [b for b in generic(receiver) if b["kind"] == "stale"]
    assert len(stale) == 1 and stale[0]["count"] == 5
    page = client.get("/webhooks", headers=reader)
    assert page.status_code == 200 and "&lt;b&gt;config&lt;/b&gt;" in page.text
    api = client.get("/api/v1/webhooks", headers=reader).json()
    assert api["counts"] == {"delivered": 8} and api["total"] == 8


def test_failed_deliveries_are_retried_with_visible_status(collector, send, clock, receiver, client, reader):
    receiver.fail_next = 2  # both webhooks answer 500 once
    assert send(make_report("db01", status=Status.FAILED)).status_code == 201
    run_once(collector)
    api = client.get("/api/v1/webhooks?status=pending", headers=reader).json()
    assert api["total"] == 2 and {i["last_error"][:8] for i in api["items"]} == {"HTTP 500"}
    assert all(i["attempts"] == 1 for i in api["items"])
    run_once(collector)  # not due yet (backoff)
    assert receiver.bodies == []
    clock.now += timedelta(seconds=6)
    run_once(collector)
    assert len(receiver.bodies) == 2
    assert client.get("/api/v1/webhooks", headers=reader).json()["counts"] == {"delivered": 2}
    metrics = client.get("/metrics", headers=reader).text
    assert 'gitops_webhook_attempts_total{status="delivered"} 2' in metrics


def rollout_notifier(engine, clock, receiver, grouping):
    from agent.collector.context import Collector

    settings = CollectorSettings(webhooks=(Webhook(f"{receiver.url}/generic"),
                                           Webhook(f"{receiver.url}/slack", WebhookKind.SLACK)),
                                 alert_grouping=grouping)
    return Collector(engine, settings, now=clock)


def fail_rollout(engine, collector, clock, hosts=158, splay_s=300, scan_s=15, until_s=345):
    """`hosts` hosts fail on COMMIT_B one after another across the splay; a scan every `scan_s`."""
    from agent.collector import store
    from agent.report import to_json

    async def go() -> None:
        start, sent = clock.now, 0
        async with httpx.AsyncClient(timeout=5) as client:
            notifier = Notifier(collector, client)
            for t in range(0, until_s + 1, scan_s):
                clock.now = start + timedelta(seconds=t)
                while sent < hosts and sent * splay_s / hosts <= t:
                    report = make_report(f"web{sent:03d}", status=Status.FAILED, commit=COMMIT_B,
                                         finished_at=start + timedelta(seconds=sent * splay_s / hosts))
                    store.ingest(engine, report, to_json(report).encode(), received_at=clock.now)
                    sent += 1
                await notifier.run_once()
    asyncio.run(go())


def test_a_failing_rollout_is_grouped_per_commit_not_per_scan(engine, clock, receiver):
    """158 hosts failing one commit over a 5-minute splay, scanned every 15s: 21 scans found failures
    (48 deliveries for 2 webhooks before grouping); with the default group wait and interval, the first
    failures go out after 30s and every other host in one more delivery, each host exactly once."""
    fail_rollout(engine, rollout_notifier(engine, clock, receiver, Grouping()), clock)
    bodies = generic(receiver)
    assert [b["kind"] for b in bodies] == ["failing", "failing"]
    assert all(b["commit"] == COMMIT_B for b in bodies)
    hosts = [h for b in bodies for h in b["hosts"]]
    assert sorted(hosts) == [f"web{i:03d}" for i in range(158)]  # each host once, none lost
    assert bodies[0]["count"] < 20 and bodies[1]["count"] > 130
    slack = [b["text"] for b in receiver.bodies if "text" in b]
    assert len(slack) == 2 and "hosts started failing at commit b1cccccccc" in slack[1]


def test_without_grouping_every_scan_is_a_delivery(engine, clock, receiver):
    """The fault as it was: one delivery per scan and webhook (what the issue measured)."""
    fail_rollout(engine, rollout_notifier(engine, clock, receiver, Grouping(0, 0)), clock)
    assert len(generic(receiver)) == 21 and len(receiver.bodies) == 42


def test_a_group_wait_covering_the_splay_gives_one_delivery(engine, clock, receiver):
    fail_rollout(engine, rollout_notifier(engine, clock, receiver, Grouping(wait_s=330, interval_s=600)),
                 clock)
    assert [b["count"] for b in generic(receiver)] == [158]


def test_a_delivery_that_gained_hosts_while_being_sent_goes_again(collector, send, clock, receiver):
    """Two collector processes: one sends a held delivery while the other adds a host to it."""
    from agent.collector import notify_store
    from agent.collector.alerts import make_alert

    assert send(make_report("db01", status=Status.FAILED, commit=COMMIT_B)).status_code == 201
    changes = notify_store.scan(collector.engine, stale_before=BASE_TIME - timedelta(days=1))
    hooks = collector.settings.webhooks[:1]
    notify_store.record(collector.engine, changes, group(changes), hooks, now=clock.now)
    (sending,) = notify_store.due(collector.engine, now=clock.now)
    late = make_alert("failing", None, COMMIT_B, [("db02", BASE_TIME)])
    notify_store.record(collector.engine, [change("db02", AlertState.FAILING, commit=COMMIT_B, task=None)],
                        [late], hooks, now=clock.now)
    assert notify_store.mark(collector.engine, sending, error=None, now=clock.now) == "delivered"
    (again,) = notify_store.due(collector.engine, now=clock.now)
    assert again.id == sending.id and json.loads(again.body)["hosts"] == ["db01", "db02"]
    notify_store.mark(collector.engine, again, error=None, now=clock.now)
    assert notify_store.due(collector.engine, now=clock.now) == []
