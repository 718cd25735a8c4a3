"""The agent's side of enrolment (agent.enrolment) against httpx.MockTransport: what each answer of the
collector does to the state file and the token file. The real collector is in tests/test_enrol_live.py."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import config, enrolment
from agent.config import AgentConfig
from agent.errors import ConfigError


def _config(tmp_path: Path, host: str = "web07", **collector: Any) -> AgentConfig:
    secret = tmp_path / "enrol-secret"
    if not secret.exists():
        secret.write_text("gco_site\n")
        secret.chmod(0o600)
    data = {"host": host, "source": {"url": str(tmp_path / "repo")}, "state_dir": str(tmp_path / "state"),
            "collector": {"url": "http://collector.test", "token_file": str(tmp_path / "etc" / "token"),
                          "enrol": True, "enrol_secret_file": str(secret), **collector}}
    return config.validate(data, origin="agent.yaml", base=tmp_path)


class Collector:
    """Answers like the collector would; `pickup` is the next pickup answer (status, body)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.ask: tuple[int, dict[str, Any]] = (201, {"id": "00aa11bb22cc33dd", "state": "pending"})
        self.pickup: tuple[int, dict[str, Any]] = (200, {"state": "pending"})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, body = self.pickup if request.url.path.endswith("/pickup") else self.ask
        return httpx.Response(status, json=body)


def test_ask_once_then_poll_and_write_the_token_privately(tmp_path: Path) -> None:
    cfg, fake = _config(tmp_path), Collector()
    status = enrolment.ensure_token(cfg, groups=("web",), transport=httpx.MockTransport(fake))
    assert (status.token_ready, status.state, status.request_id) == (False, "pending", "00aa11bb22cc33dd")
    assert "gitops-collector enrol approve 00aa11bb22cc33dd" in status.message
    ask, poll = fake.requests
    kept = json.loads((tmp_path / "state" / "enrolment.json").read_text())
    assert stat.S_IMODE((tmp_path / "state" / "enrolment.json").stat().st_mode) == 0o600
    assert ask.headers["authorization"] == "Bearer gco_site"
    assert json.loads(ask.content) == {"host": "web07", "groups": ["web"], "pickup_sha256": hashlib.sha256(
        kept["pickup_secret"].encode()).hexdigest()}
    assert poll.headers["authorization"] == f"Bearer {kept['pickup_secret']}"  # never the site secret

    fake.pickup = (200, {"state": "collected", "token": "gco_mine"})
    done = enrolment.ensure_token(cfg, transport=httpx.MockTransport(fake))
    assert done.token_ready and len(fake.requests) == 3  # no second request: only the poll
    token = tmp_path / "etc" / "token"
    assert token.read_text() == "gco_mine\n" and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert not (tmp_path / "state" / "enrolment.json").exists()
    assert enrolment.ensure_token(cfg, transport=httpx.MockTransport(fake)).token_ready
    assert len(fake.requests) == 3  # the token file is there: nothing is asked


@pytest.mark.parametrize(("ask", "message"), [
    ((429, {"error": "20 enrolment requests from 10.0.0.5 are pending already"}), "HTTP 429: 20 enrolment"),
    ((401, {"error": "unknown or revoked enrolment secret"}), "refused the enrolment request: HTTP 401"),
])
def test_a_refused_request_is_asked_again_next_time(tmp_path: Path, ask: tuple[int, dict[str, Any]],
                                                   message: str) -> None:
    cfg, fake = _config(tmp_path), Collector()
    fake.ask = ask
    status = enrolment.ensure_token(cfg, transport=httpx.MockTransport(fake))
    assert not status.token_ready and message in status.message
    first = json.loads((tmp_path / "state" / "enrolment.json").read_text())
    fake.ask = (201, {"id": "00aa11bb22cc33dd"})
    assert enrolment.ensure_token(cfg, transport=httpx.MockTransport(fake)).state == "pending"
    again = json.loads((tmp_path / "state" / "enrolment.json").read_text())
    assert again["pickup_secret"] == first["pickup_secret"]  # the same request, asked again


def test_denied_forgotten_and_unreachable(tmp_path: Path) -> None:
    cfg, fake = _config(tmp_path), Collector()
    fake.pickup = (200, {"state": "denied", "decided_by": "olga", "reason": "not ours"})
    denied = enrolment.ensure_token(cfg, transport=httpx.MockTransport(fake))
    assert denied.state == "denied" and "denied by olga: not ours (remove " in denied.message
    assert (tmp_path / "state" / "enrolment.json").exists()  # no new request by itself
    fake.pickup = (404, {"error": "no enrolment request with this id and pickup secret"})
    forgotten = enrolment.ensure_token(cfg, transport=httpx.MockTransport(fake))
    assert "is over (HTTP 404: no enrolment request" in forgotten.message
    assert not (tmp_path / "state" / "enrolment.json").exists()  # a new request next time

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    away = enrolment.ensure_token(cfg, transport=httpx.MockTransport(down))
    assert not away.token_ready and "collector unreachable (ConnectError" in away.message


def test_a_new_host_name_or_collector_is_a_new_request(tmp_path: Path) -> None:
    fake = Collector()
    enrolment.ensure_token(_config(tmp_path), transport=httpx.MockTransport(fake))
    enrolment.ensure_token(_config(tmp_path, host="web08"), transport=httpx.MockTransport(fake))
    asks = [json.loads(r.content) for r in fake.requests if not r.url.path.endswith("/pickup")]
    assert [a["host"] for a in asks] == ["web07", "web08"]
    assert asks[0]["pickup_sha256"] != asks[1]["pickup_sha256"]


def test_an_unsafe_site_secret_and_a_config_without_credentials_are_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    (tmp_path / "enrol-secret").chmod(0o644)
    with pytest.raises(ConfigError, match="too open"):
        enrolment.ensure_token(cfg, transport=httpx.MockTransport(Collector()))
    with pytest.raises(ConfigError, match=r"'collector\.enrol' needs 'collector\.enrol_secret_file' or"):
        _config(tmp_path, enrol_secret_file=None)
    with pytest.raises(ConfigError, match=r"'collector\.enrol' needs 'collector\.url'"):
        _config(tmp_path, url=None)
