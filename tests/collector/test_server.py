"""The collector once over a real socket: `gitops-collector serve` on 127.0.0.1 as a subprocess."""

from __future__ import annotations

import httpx
import pytest

from agent.collector import tokens
from agent.collector.tokens import TokenKind
from agent.report import Status, to_json
from tests.factory import BASE_TIME, make_report
from tests.live_collector import CollectorProcess


@pytest.fixture
def server(engine, db_url):
    process = CollectorProcess(db_url).start()
    yield process
    process.stop()


def test_ingest_and_query_over_a_socket(server, engine):
    ingest = tokens.create(engine, TokenKind.INGEST, "web01", now=BASE_TIME)[1]
    reader = tokens.create(engine, TokenKind.READER, "alice", now=BASE_TIME)[1]
    report = make_report("web01", status=Status.DRIFTED)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        created = client.post("/api/v1/reports", content=to_json(report),
                              headers={"Authorization": f"Bearer {ingest}"})
        assert created.status_code == 201
        duplicate = client.post("/api/v1/reports", content=to_json(report),
                                headers={"Authorization": f"Bearer {ingest}"})
        assert duplicate.status_code == 200
        hosts = client.get("/api/v1/hosts", headers={"Authorization": f"Bearer {reader}"}).json()
        assert [(h["host"], h["status"]) for h in hosts["items"]] == [("web01", "drifted")]
        assert client.get("/healthz").json()["database"] == "ok"


def test_serve_creates_the_schema_of_an_empty_database(db_url):
    process = CollectorProcess(db_url).start()  # no `migrate` before: serve must do it
    try:
        assert httpx.get(f"{process.url}/api/v1/hosts", timeout=10).status_code == 401
    finally:
        process.stop()


def test_several_worker_processes(engine, db_url):
    ingest = tokens.create(engine, TokenKind.INGEST, "web01", now=BASE_TIME)[1]
    process = CollectorProcess(db_url, None, "--workers", "2").start()
    try:
        with httpx.Client(base_url=process.url, timeout=10) as client:
            for _ in range(6):  # several connections, spread over the workers
                report = make_report("web01")
                response = client.post("/api/v1/reports", content=to_json(report),
                                       headers={"Authorization": f"Bearer {ingest}", "Connection": "close"})
                assert response.status_code == 201
    finally:
        process.stop()
