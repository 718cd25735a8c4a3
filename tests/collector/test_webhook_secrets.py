"""Webhooks (issue 15): report values cannot inject Slack markup; webhook URLs (credentials, for Slack)
are never shown to readers or logged in full, and can come from a file or the environment instead of the
command line that `ps` shows. Deliveries go to real HTTP receivers on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from agent.collector.alerts import (
    Alert,
    Grouping,
    Webhook,
    WebhookKind,
    mask_url,
    payload,
    scrub_url,
    slack_escape,
)
from agent.collector.cli import _parser, _settings
from agent.collector.context import CollectorSettings
from agent.collector.errors import CollectorError
from agent.report import Status
from tests.collector.test_ui_notify import run_once
from tests.factory import drift_item, make_report
from tests.live_collector import CollectorProcess, token

SECRET = "T0001/B0002/s3cr3tW3bh00kT0k3n"
PHISH = "<https://evil.example/login|Click to re-authenticate>"
MENTION = "<!channel>"


class Receiver:
    """Records each POST (path, headers, body); answers 404 echoing the path (as some receivers do) for
    paths under /gone/."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((self.path, dict(self.headers), body))
                gone = self.path.startswith("/gone/")
                self.send_response(404 if gone else 200)
                self.end_headers()
                if gone:
                    self.wfile.write(f"no webhook at {self.path}".encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, path_start: str) -> list[dict]:
        return [json.loads(body) for path, _, body in self.posts if path.startswith(path_start)]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def settings(receiver):
    return CollectorSettings(webhooks=(Webhook(f"{receiver.url}/generic/{SECRET}"),
                                       Webhook(f"{receiver.url}/slack/{SECRET}", WebhookKind.SLACK),
                                       Webhook(f"{receiver.url}/gone/{SECRET}?token=query-s3cr3t")),
                             public_urls=("https://collector.example.com",),
                             alert_grouping=Grouping(wait_s=0.0, interval_s=0.0))  # sent at the first scan


def test_slack_text_is_literal_whatever_the_report_says():
    alert = Alert("drifting", PHISH, f"{MENTION}0123456789", ("<!here>", "web&01"),
                  datetime(2026, 11, 20, tzinfo=UTC), "f" * 32)
    body = payload(alert, WebhookKind.SLACK, "https://collector.example.com")
    text = body["text"]
    assert "<" not in text and ">" not in text  # no mention, link or other control sequence
    assert "&lt;https://evil.example/login|Click to re-authenticate&gt;" in text
    assert "&lt;!channel&gt;" in text  # the commit cut (10 characters) keeps the mention: escaped after it
    assert "&lt;!here&gt;, web&amp;01" in text
    assert text.endswith("\nhttps://collector.example.com/drift")
    assert body["unfurl_links"] is False and body["unfurl_media"] is False
    assert slack_escape("a & <b> & c") == "a &amp; &lt;b&gt; &amp; c"


def test_hostile_report_values_reach_slack_escaped_and_json_as_data(collector, send, receiver):
    hostile = make_report("web01", status=Status.DRIFTED, commit=f"{MENTION}{'e' * 30}",
                          drift=(drift_item(PHISH),))
    assert send(hostile).status_code == 201
    run_once(collector)
    (slack,) = receiver.bodies("/slack/")
    assert "<" not in slack["text"] and "&lt;!channel&gt;" in slack["text"]
    assert "&lt;https://evil.example/login|Click to re-authenticate&gt;" in slack["text"]
    assert slack["text"].endswith("\nhttps://collector.example.com/drift")  # serve --public-url
    (generic,) = receiver.bodies("/generic/")
    assert (generic["task"], generic["commit"]) == (PHISH, hostile.source.commit)  # values as reported
    assert PHISH in generic["summary"]
    headers = next(h for p, h, _ in receiver.posts if p.startswith("/generic/"))
    assert headers["Content-Type"] == "application/json"


def test_readers_never_see_a_webhook_url_nor_its_secret(collector, send, receiver, client, reader, caplog):
    assert send(make_report("db01", status=Status.FAILED)).status_code == 201
    with caplog.at_level(logging.WARNING):
        run_once(collector)
    assert len(receiver.posts) == 3
    page = client.get("/webhooks", headers=reader).text
    api = client.get("/api/v1/webhooks", headers=reader).json()
    for shown in (page, json.dumps(api), caplog.text):
        assert SECRET not in shown and "query-s3cr3t" not in shown and "/gone/" not in shown
    host = receiver.url.removeprefix("http://")
    assert [w["url"] for w in api["webhooks"]] == [f"#1 http://{host}/…", f"#2 http://{host}/…",
                                                  f"#3 http://{host}/…"]
    failed = next(i for i in api["items"] if i["last_error"])
    assert failed["webhook"] == 3 and failed["last_error"].startswith("HTTP 404: no webhook at")
    assert f"#2 http://{host}/…" in page
    assert "attempt 1 failed" in caplog.text  # the failure is logged, masked


def test_masking_and_scrubbing():
    url = f"https://user:pw@hooks.slack.example:8443/services/{SECRET}?x=1"
    assert mask_url(url) == "https://hooks.slack.example:8443/…"
    assert mask_url("http://[2001:db8::1]/hook/abc") == "http://[2001:db8::1]/…"
    scrubbed = scrub_url(f"ConnectError for {url}; receiver said: bad path /services/{SECRET}", url)
    assert SECRET not in scrubbed and "pw" not in scrubbed and "hooks.slack.example:8443/…" in scrubbed


def serve_args(*extra: str):
    return _parser().parse_args(["serve", *extra])


def test_webhooks_from_a_file_not_readable_by_others(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("GITOPS_COLLECTOR_WEBHOOKS", raising=False)
    monkeypatch.delenv("GITOPS_COLLECTOR_WEBHOOK_FILE", raising=False)
    hooks = tmp_path / "webhooks"
    hooks.write_text(f"# alerts\n\nhttps://hooks.example.com/a/{SECRET}\n"
                     f"  https://hooks.slack.example/services/{SECRET},slack  \n")
    hooks.chmod(0o644)
    with pytest.raises(CollectorError, match=r"permissions 0644 let others read its secrets") as e:
        _settings(serve_args("--webhook-file", str(hooks)))
    assert SECRET not in str(e.value)
    hooks.chmod(0o640)  # root:gitops-collector 0640 is how a service reads it
    webhooks = _settings(serve_args("--webhook-file", str(hooks))).webhooks
    assert webhooks == (Webhook(f"https://hooks.example.com/a/{SECRET}"),
                        Webhook(f"https://hooks.slack.example/services/{SECRET}", WebhookKind.SLACK))
    monkeypatch.setenv("GITOPS_COLLECTOR_WEBHOOK_FILE", str(hooks))  # the packaged service's way
    assert _settings(serve_args()).webhooks == webhooks
    hooks.write_text(f"https://hooks.example.com/a/{SECRET}\nhooks.example.com/{SECRET}\n")
    with pytest.raises(CollectorError, match=r"line 2: webhook: expected http\(s\)://HOST/PATH") as e:
        _settings(serve_args("--webhook-file", str(hooks)))
    assert SECRET not in str(e.value)
    with pytest.raises(CollectorError, match="cannot read it"):
        _settings(serve_args("--webhook-file", str(tmp_path / "absent")))


def test_webhooks_from_the_environment_and_each_url_once(monkeypatch):
    monkeypatch.setenv("GITOPS_COLLECTOR_WEBHOOKS", f"https://a.example/{SECRET}\n https://b.example/x,slack")
    webhooks = _settings(serve_args("--webhook", "https://c.example/y")).webhooks
    assert [w.url for w in webhooks] == ["https://c.example/y", f"https://a.example/{SECRET}",
                                         "https://b.example/x"]
    monkeypatch.setenv("GITOPS_COLLECTOR_WEBHOOKS", "https://c.example/y,slack")
    with pytest.raises(CollectorError, match=r"https://c.example/…: the same URL is given twice"):
        _settings(serve_args("--webhook", "https://c.example/y"))


def test_a_served_collector_keeps_webhook_urls_out_of_ps(tmp_path, monkeypatch, db_url, engine, receiver):
    hooks = tmp_path / "webhooks"
    hooks.write_text(f"{receiver.url}/slack/{SECRET},slack\n")
    hooks.chmod(0o600)
    monkeypatch.setenv("GITOPS_COLLECTOR_WEBHOOKS", f"{receiver.url}/generic/{SECRET}")
    process = CollectorProcess(db_url, None, "--webhook-file", str(hooks)).start()
    try:
        assert process.proc is not None
        cmdline = Path(f"/proc/{process.proc.pid}/cmdline").read_bytes().decode()
        assert SECRET not in cmdline and "--webhook-file" in cmdline
        reader_token = token(db_url, "--reader", "ops")
        listed = httpx.get(f"{process.url}/api/v1/webhooks", headers={"Authorization": f"Bearer {reader_token}"},
                           timeout=10).json()
        assert [(w["webhook"], w["kind"]) for w in listed["webhooks"]] == [(1, "slack"), (2, "json")]
        assert SECRET not in json.dumps(listed)
    finally:
        process.stop()
