"""The collector once over a real socket: `gitops-collector serve` on 127.0.0.1 as a subprocess."""

from __future__ import annotations

import socket
import time

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


def test_a_client_gone_mid_body_is_one_log_line_and_counted_not_a_traceback(engine, db_url):
    ingest = tokens.create(engine, TokenKind.INGEST, "web01", now=BASE_TIME)[1]
    reader = {"Authorization": f"Bearer {tokens.create(engine, TokenKind.READER, 'ops', now=BASE_TIME)[1]}"}
    process = CollectorProcess(db_url, None).start()
    try:
        for _ in range(3):  # agents killed while sending: headers and part of the body, then gone
            with socket.create_connection((process.address, process.port), timeout=10) as sock:
                sock.sendall(b"POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Authorization: Bearer " + ingest.encode() + b"\r\n"
                             b"Content-Length: 5000\r\n\r\n" + b'{"schema_version": 1, ')
        metrics = ""
        deadline = time.monotonic() + 10
        while 'result="disconnected"} 3' not in metrics and time.monotonic() < deadline:
            time.sleep(0.1)
            metrics = httpx.get(f"{process.url}/metrics", headers=reader, timeout=10).text
        assert 'gitops_reports_ingested_total{result="disconnected"} 3' in metrics, metrics
        assert 'result="error"' not in metrics
    finally:
        process.stop()
    log = process.log_text()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log
