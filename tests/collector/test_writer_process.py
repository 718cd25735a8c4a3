"""`serve --writer-process` (agent.collector.writer_process): the group commit's batches stored by a child
process, on SQLite and PostgreSQL. The API answers what it answers with the thread writer
(tests/collector/test_group_commit.py); a child that dies costs its batch a 503 and is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, text

from agent.collector import tokens
from agent.collector.cli import main
from agent.collector.context import Collector, CollectorSettings
from agent.collector.errors import CollectorError, DatabaseError, InvalidReportError
from agent.collector.tables import hosts, review_items, runs
from agent.collector.writer_process import WriterProcess, _picklable
from agent.report import Status, to_json
from tests.factory import BASE_TIME, make_report
from tests.live_collector import CollectorProcess, token


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture
def settings() -> CollectorSettings:
    return CollectorSettings(group_commit=True, writer_process=True)


@pytest.fixture
def writer(collector: Collector) -> Iterator[WriterProcess]:
    assert collector.group is not None and collector.group.writer_process is not None
    yield collector.group.writer_process
    collector.group.writer_process.stop()


def test_the_api_answers_through_the_writer_process(send: Any, engine: Engine, writer: WriterProcess,
                                                    collector: Collector, token_for: Any) -> None:
    report = make_report("web01.example.com", status=Status.DRIFTED)
    created = send(report)
    assert (created.status_code, created.json()) == (201, {"run_id": report.run_id, "result": "created"})
    assert writer.process is not None and writer.process.pid != os.getpid() and writer.starts == 1
    assert count(engine, runs) == 1 and count(engine, hosts) == 1
    assert count(engine, review_items) == 1  # the drift review ran in the child's transaction
    again = send(report)
    assert (again.status_code, again.json()["result"]) == (200, "duplicate")
    taken = send(make_report("web02.example.com", run_id=report.run_id))
    assert taken.status_code == 409 and "already stored for another host" in taken.json()["error"]
    # refused in the child, after the handler's checks: a token revoked since the map cached it
    secret = token_for("web01.example.com")
    tokens.revoke(engine, "web01.example.com", now=BASE_TIME)
    refused = send(make_report("web01.example.com"), secret)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    assert tokens.hash_token(secret) not in collector.group.principals  # type: ignore[union-attr]
    assert count(engine, runs) == 1 and writer.starts == 1  # one child served it all


def test_concurrent_reports_share_the_childs_batches(engine: Engine, collector: Collector,
                                                    writer: WriterProcess) -> None:
    group = collector.group
    assert group is not None
    group.max_batch = 8
    reports = [make_report(f"web{i:02d}.example.com") for i in range(30)]

    async def ingest_all() -> list[bool]:
        return await asyncio.gather(*(group.ingest(r, to_json(r).encode(), received_at=BASE_TIME)
                                      for r in reports))

    assert asyncio.run(ingest_all()) == [True] * 30
    assert count(engine, runs) == 30 and writer.starts == 1


def test_a_child_killed_between_batches_is_replaced(send: Any, engine: Engine, writer: WriterProcess) -> None:
    assert send(make_report("web01.example.com")).status_code == 201
    assert writer.process is not None
    dead = writer.process
    os.kill(dead.pid, signal.SIGKILL)  # type: ignore[arg-type]
    dead.join(10)
    assert send(make_report("web02.example.com")).status_code == 201  # a new child took the batch
    assert writer.starts == 2 and writer.process is not None and writer.process.pid != dead.pid
    assert count(engine, runs) == 2


def test_a_child_that_dies_with_a_batch_in_hand_costs_it_a_503_and_the_retry_stores_it_once(
        send: Any, engine: Engine, writer: WriterProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    assert send(make_report("web01.example.com")).status_code == 201
    real = writer._ensure

    def dying() -> Any:  # the child dies once the batch is on its way, before it could answer
        pipe = real()
        assert writer.process is not None and writer.process.pid is not None
        os.kill(writer.process.pid, signal.SIGKILL)
        writer.process.join(10)
        return pipe

    monkeypatch.setattr(writer, "_ensure", dying)
    report = make_report("web02.example.com")
    lost = send(report)
    assert lost.status_code == 503 and "writer process died" in lost.json()["error"]
    assert "retry" in lost.json()["error"]
    monkeypatch.setattr(writer, "_ensure", real)
    retried = send(report)  # the agent's outbox sends it again
    assert retried.status_code in (200, 201)  # 200 had the child committed before it died
    assert count(engine, runs) == 2 and writer.starts == 2


def test_the_databases_refusal_crosses_from_the_child(engine: Engine, writer: WriterProcess) -> None:
    """The child's statements fail (here the runs table is gone under it): the database's own error comes
    back, for the batch as a whole or for its report (after the retry report by report)."""
    writer.start()
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE runs RENAME TO runs_gone"))
    items = [(make_report("web01.example.com"), b"{}", BASE_TIME)]

    async def write() -> Any:
        return await writer.write(items, [None])

    try:
        (result,) = asyncio.run(write())
    except Exception as e:
        result = e
    assert isinstance(result, Exception) and "runs" in str(result)
    assert writer.starts == 1  # the child lives on


def test_an_exception_that_does_not_pickle_crosses_as_a_collector_error_of_its_status() -> None:
    class Unpicklable(Exception):
        def __reduce__(self) -> Any:
            raise TypeError("cannot pickle this")

    crossed = _picklable(Unpicklable("the driver's own error"))
    assert isinstance(crossed, DatabaseError) and crossed.status == 503
    assert str(crossed) == "the driver's own error"

    class Odd(InvalidReportError):
        def __reduce__(self) -> Any:
            raise TypeError("cannot pickle this")

    odd = _picklable(Odd("bad field", "interval_s"))
    assert isinstance(odd, CollectorError) and odd.status == 422 and str(odd) == "bad field"
    plain = InvalidReportError("bad", "host")
    assert _picklable(plain) is plain and _picklable(True) is True


def test_serve_refuses_a_writer_process_without_group_commit_or_with_a_private_database(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["serve", "--db", db, "--writer-process", "--no-group-commit"]) == 1
    assert "--writer-process" in capsys.readouterr().err
    assert main(["serve", "--db", "sqlite://", "--writer-process"]) == 1
    err = capsys.readouterr().err
    assert "--writer-process needs a database another process can open" in err and len(err.splitlines()) == 1


def test_a_served_collector_starts_its_writer_and_stops_it(db_url: str) -> None:
    """A real `serve --writer-process`: the child starts with it (before the first request), stores what
    is sent, and is gone when the collector stops."""
    secret = token(db_url, "web01.example.com")
    server = CollectorProcess(db_url, None, "--writer-process").start()
    try:
        assert server.proc is not None
        children = _children(server.proc.pid)
        assert children, "no writer process"
        report = make_report("web01.example.com")
        sent = httpx.post(f"{server.url}/api/v1/reports", content=to_json(report), timeout=30,
                          headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"})
        assert sent.status_code == 201
        got = httpx.get(f"{server.url}/api/v1/runs/{report.run_id}", timeout=30,
                        headers={"Authorization": f"Bearer {token(db_url, '--reader', 'ops')}"})
        assert got.status_code == 200
    finally:
        server.stop()
    deadline = time.monotonic() + 10
    while _running(children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(children)
    assert "Traceback" not in server.log


def _running(pids: list[int]) -> list[int]:
    """Those of `pids` still running (a zombie waiting for init to reap it has stopped)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def test_two_batches_in_the_pipe_are_answered_in_order_and_both_fail_when_the_child_dies(
        engine: Engine, writer: WriterProcess) -> None:
    """The child holds two batches (stopped, so neither is stored yet); each caller gets its own answer, and
    when the child dies both get 503; the next batch starts a new child."""
    writer.start()
    assert writer.process is not None and writer.process.pid is not None
    pid = writer.process.pid
    first = [(make_report("web01.example.com"), b"{}", BASE_TIME)]
    second = [(make_report("web02.example.com"), b"{}", BASE_TIME)]
    os.kill(pid, signal.SIGSTOP)
    outcomes: dict[str, Any] = {}

    def call(name: str, items: Any) -> None:
        try:
            outcomes[name] = writer._round_trip(items, [None])
        except Exception as e:
            outcomes[name] = e

    threads = [threading.Thread(target=call, args=("first", first)),
               threading.Thread(target=call, args=("second", second))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while writer._sent < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer._sent == 2  # both batches sent to the stopped child
    os.kill(pid, signal.SIGKILL)
    for thread in threads:
        thread.join(30)
    assert all(isinstance(outcomes[n], DatabaseError) and "retry" in str(outcomes[n]) for n in outcomes), outcomes
    assert set(outcomes) == {"first", "second"} and count(engine, runs) == 0
    # the next batch: a new child, two batches in flight answered each with its own results
    outcomes.clear()
    threads = [threading.Thread(target=call, args=("first", first)),
               threading.Thread(target=call, args=("second", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes == {"first": [True], "second": [True]} and writer.starts == 2
    assert count(engine, runs) == 2
