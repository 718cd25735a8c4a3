from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from agent.collector import db, tokens
from agent.collector.app import create_app
from agent.collector.context import Collector, CollectorSettings
from agent.collector.tokens import TokenKind
from agent.report import Report, to_json
from tests.factory import BASE_TIME
from tests.live_collector import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    # a test that uses `engine` (or whose module sets MIGRATED_DB_URL, as it migrates at once) gets a
    # migrated copy, which db.prepare then finds at the newest revision; any other gets an empty database,
    # as `gitops-collector migrate` or serve would meet it
    migrated = "engine" in request.fixturenames or getattr(request.module, "MIGRATED_DB_URL", False)
    with fresh_database(request.param, tmp_path, migrated=migrated) as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = db.create(db_url)
    db.prepare(engine)
    yield engine
    engine.dispose()


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(BASE_TIME)


@pytest.fixture
def settings() -> CollectorSettings:
    return CollectorSettings()


@pytest.fixture
def collector(engine: Engine, settings: CollectorSettings, clock: Clock) -> Collector:
    return Collector(engine, settings, now=clock)


class ASGIClient:
    """A synchronous face on httpx's ASGI transport: the real app in-process, no socket."""

    def __init__(self, app: Any, client_addr: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        self._runner = asyncio.Runner()
        transport = httpx.ASGITransport(app=app, client=client_addr)
        self._client = httpx.AsyncClient(transport=transport, base_url="http://collector.test")

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._runner.run(self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()


@pytest.fixture
def client(collector: Collector) -> Iterator[ASGIClient]:
    c = ASGIClient(create_app(collector))
    yield c
    c.close()


@pytest.fixture
def token_for(engine: Engine) -> Callable[[str], str]:
    """An ingest token for a host (created once per host)."""
    made: dict[str, str] = {}

    def make(host: str) -> str:
        if host not in made:
            made[host] = tokens.create(engine, TokenKind.INGEST, host, now=BASE_TIME)[1]
        return made[host]

    return make


@pytest.fixture
def reader(engine: Engine) -> dict[str, str]:
    secret = tokens.create(engine, TokenKind.READER, "alice", now=BASE_TIME)[1]
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def send(client: ASGIClient, token_for: Callable[[str], str]) -> Callable[..., httpx.Response]:
    """POST a report with its host's token; returns the response."""

    def post(report: Report, token: str | None = None) -> httpx.Response:
        secret = token or token_for(report.host)
        return client.post("/api/v1/reports", content=to_json(report),
                           headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"})

    return post
