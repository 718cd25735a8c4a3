"""Sender status handling with httpx.MockTransport (delivery to a real collector: tests/collector)."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest

from agent.config import CollectorConfig
from agent.errors import ConfigError
from agent.outbox import Outbox
from agent.sender import Sender, SendOutcome, backoff_delay_s, classify_response, read_token, tls_context
from tests.factory import make_report

URL = "http://collector.test"


class Collector:
    """A scripted collector: answers the statuses in `script` in order, then `then`."""

    def __init__(self, *script, then=201, headers=None):
        self.script = list(script)
        self.then = then
        self.headers = headers or {}
        self.received: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/reports"
        assert request.headers["authorization"] == "Bearer tok"
        self.received.append(json.loads(request.content))
        status = self.script.pop(0) if self.script else self.then
        if isinstance(status, Exception):
            raise status
        body = {"error": f"drift[0].kind: no (status {status})"} if status >= 400 else {"result": "ok"}
        return httpx.Response(status, json=body, headers=self.headers)


def make_sender(handler, sleeps=None, **kwargs):
    sleeps = [] if sleeps is None else sleeps
    return Sender(URL, "tok", transport=httpx.MockTransport(handler), sleep=sleeps.append, rnd=lambda: 1.0,
                  **kwargs)


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "outbox")
    for _ in range(3):
        box.put(make_report())
    return box


@pytest.mark.parametrize(("status", "outcome"), [
    (201, SendOutcome.DELIVERED), (202, SendOutcome.DELIVERED), (200, SendOutcome.DUPLICATE),
    (408, SendOutcome.RETRY), (429, SendOutcome.RETRY), (500, SendOutcome.RETRY), (503, SendOutcome.RETRY),
    (400, SendOutcome.REJECTED), (403, SendOutcome.REJECTED), (409, SendOutcome.REJECTED), (413, SendOutcome.REJECTED),
    (422, SendOutcome.REJECTED),
    (401, SendOutcome.STOP), (404, SendOutcome.STOP), (301, SendOutcome.STOP),
])
def test_classify(status, outcome):
    assert classify_response(status) is outcome


def test_backoff_is_exponential_capped_and_jittered():
    assert [backoff_delay_s(a, base_s=1, cap_s=10, rnd=1.0) for a in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert backoff_delay_s(3, base_s=1, cap_s=10, rnd=0.25) == 1.0


def test_delivers_oldest_first_and_deletes_on_2xx(outbox):
    order = [e.run_id for e in outbox.pending()]
    collector = Collector(201, 200, 201)
    result = make_sender(collector).deliver_outbox(outbox)
    assert (result.delivered, result.duplicates, result.remaining, result.ok) == (2, 1, 0, True)
    assert [r["run_id"] for r in collector.received] == order
    assert outbox.pending() == []


def test_5xx_and_network_errors_are_retried_with_backoff(outbox):
    sleeps: list[float] = []
    collector = Collector(503, httpx.ConnectError("refused"), 500)
    result = make_sender(collector, sleeps, max_attempts=4, backoff_base_s=1, backoff_cap_s=60).deliver_outbox(outbox)
    assert result.ok and result.delivered == 3
    assert sleeps == [1, 2, 4]


def test_retry_after_is_honoured(outbox):
    sleeps: list[float] = []
    collector = Collector(429, headers={"Retry-After": "7"})
    make_sender(collector, sleeps, backoff_base_s=1).deliver_outbox(outbox)
    assert sleeps[0] == 7


def test_gives_up_after_max_attempts_and_keeps_everything(outbox):
    collector = Collector(then=503)
    result = make_sender(collector, max_attempts=3).deliver_outbox(outbox)
    assert (result.delivered, result.remaining) == (0, 3)
    assert "HTTP 503" in result.error
    assert len(collector.received) == 3  # one report, three attempts; the order is kept
    assert len(outbox.pending()) == 3


def test_permanent_4xx_quarantines_with_the_reason_and_goes_on(outbox):
    first = outbox.pending()[0]
    result = make_sender(Collector(422)).deliver_outbox(outbox)
    assert (result.quarantined, result.delivered, result.ok) == (1, 2, True)
    (q,) = outbox.quarantined()
    assert q.entry.run_id == first.run_id
    assert q.reason == "HTTP 422: drift[0].kind: no (status 422)"


def test_a_run_id_conflict_is_quarantined_once_logged_and_the_flush_goes_on(outbox, caplog):
    first = outbox.pending()[0]
    collector = Collector(409)
    with caplog.at_level("ERROR", logger="agent.sender"):
        result = make_sender(collector, max_attempts=4).deliver_outbox(outbox)
    assert (result.quarantined, result.delivered, result.ok) == (1, 2, True)
    assert len(collector.received) == 3  # sent once: a conflict is not retried
    (q,) = outbox.quarantined()
    assert (q.entry.run_id, q.reason) == (first.run_id, "HTTP 409: drift[0].kind: no (status 409)")
    assert f"collector holds another report under run_id {first.run_id}" in caplog.text


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "9" * 5000, "-1", "Wed, 21 Oct 2026 07:28:00 GMT"])
def test_a_retry_after_that_is_not_ascii_seconds_never_breaks_delivery(outbox, value):
    sleeps: list[float] = []
    collector = Collector(429, headers={"Retry-After": value.encode()})
    result = make_sender(collector, sleeps, backoff_base_s=1, backoff_cap_s=60).deliver_outbox(outbox)
    assert result.ok and result.delivered == 3
    assert sleeps and sleeps[0] <= 60


@pytest.mark.parametrize("status", [401, 404])
def test_token_or_url_problems_stop_and_keep_every_report(outbox, status):
    result = make_sender(Collector(then=status)).deliver_outbox(outbox)
    assert (result.remaining, result.quarantined) == (3, 0)
    assert f"HTTP {status}" in result.error
    assert len(outbox.pending()) == 3


def test_deadline_bounds_the_time_spent(outbox):
    result = make_sender(Collector(then=503), max_attempts=10, backoff_base_s=100).deliver_outbox(outbox, deadline_s=5)
    assert result.remaining == 3


def test_token_file_readable_by_others_is_refused(tmp_path):
    token = tmp_path / "token"
    token.write_text("tok\n")
    token.chmod(0o644)
    with pytest.raises(ConfigError) as e:
        read_token(token)
    assert str(e.value) == (f"Permissions 0644 for '{token}' are too open: a token file must not be "
                            f"accessible by group or others (chmod 600 {token})")
    token.chmod(0o640)
    with pytest.raises(ConfigError, match="too open"):
        read_token(token)
    token.chmod(0o600)
    assert read_token(token) == "tok"


@pytest.mark.parametrize(("content", "message"), [("", "one token"), ("a b\n", "one token")])
def test_token_file_content_is_checked(tmp_path, content, message):
    token = tmp_path / "token"
    token.write_text(content)
    token.chmod(0o600)
    with pytest.raises(ConfigError, match=message):
        read_token(token)


def test_missing_token_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the collector token"):
        read_token(tmp_path / "absent")


def test_a_directory_is_no_token_file(tmp_path):
    """Not "too open ... chmod 600", which doctor printed beside its own "not a regular file"."""
    (tmp_path / "dir").mkdir(mode=0o755)
    with pytest.raises(ConfigError) as e:
        read_token(tmp_path / "dir")
    assert str(e.value) == f"{tmp_path / 'dir'}: not a regular file (the collector token file)"


def test_from_config_needs_a_url_and_checks_the_token(tmp_path):
    with pytest.raises(ConfigError, match=r"collector\.url"):
        Sender.from_config(CollectorConfig(None, tmp_path / "token", None))
    token = tmp_path / "token"
    token.write_text("tok")
    token.chmod(0o666)
    with pytest.raises(ConfigError, match="too open"):
        Sender.from_config(CollectorConfig("https://c.example.com", token, None))


def test_tls_verifies_by_default_and_adds_a_private_ca(tmp_path):
    context = tls_context(None)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="ca_file"):
        tls_context(bad)


@pytest.mark.parametrize(("status", "body", "why"), [
    (503, {"error": "database unavailable"}, "HTTP 503: database unavailable"),
    (401, {"error": "unknown token"}, "HTTP 401: unknown token"),
    (502, None, "HTTP 502: Bad Gateway"),
])
def test_a_refused_rollout_answer_names_the_status_once(status, body, why):
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/rollouts/" + "a" * 40
        return httpx.Response(status, json=body) if body else httpx.Response(status)

    answer, reason = make_sender(handler).rollout("a" * 40, "b" * 64, "version: 1\n")
    assert answer is None and reason == why
