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

from agent.collector.alerts import AlertState, HostChange, Webhook, WebhookKind, group, parse_webhook
from agent.collector.app import CollectorSettings
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
                                       Webhook(f"{receiver.url}/slack", WebhookKind.SLACK)))


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
