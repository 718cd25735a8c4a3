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
from sqlalchemy import Engine, create_engine, func, make_url, select, text
from sqlalchemy.pool import NullPool

from agent.collector import tokens, writer_process
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
    # --listen: serve binds its address once before this check, and 8080 may be in use here
    assert main(["serve", "--db", "sqlite://", "--writer-process", "--listen", "127.0.0.1:0"]) == 1
    err = capsys.readouterr().err
    assert "--writer-process needs a database another process can open" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("url", [
    "sqlite://", "sqlite:///:memory:",
    "sqlite:///file::memory:?cache=shared&uri=true",  # SQLite's shared in-memory database
    "sqlite:///file:scratch?mode=memory&cache=shared&uri=true",  # a named one
])
def test_every_form_of_an_in_memory_sqlite_database_is_refused(url: str) -> None:
    with pytest.raises(CollectorError, match="not an in-memory SQLite database"):
        writer_process.database_url(create_engine(url, poolclass=NullPool))


@pytest.mark.parametrize("url", ["sqlite:///{path}", "sqlite:///file:{path}?uri=true",
                                 "sqlite:///file:{path}?mode=rwc&uri=true"])
def test_a_sqlite_file_by_path_or_uri_is_accepted(tmp_path: Path, url: str) -> None:
    given = make_url(url.format(path=tmp_path / "c.db"))
    opened = make_url(writer_process.database_url(create_engine(given, poolclass=NullPool)))
    assert (opened.database, dict(opened.query)) == (given.database, dict(given.query))


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


@pytest.mark.parametrize("delay_s", [0.0, 0.3])
def test_a_stop_while_the_writer_starts_is_a_clean_stop(db_url: str, tmp_path: Path, delay_s: float) -> None:
    """`systemctl stop` (SIGTERM to every process of the unit) just after `serve --writer-process` spawned
    its child, before the child said ready: the server stops as at any SIGTERM (no "startup failed", no
    exit code 3, which would fail the unit's stop), with one warning naming what happened."""
    import subprocess
    import sys

    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agent.collector.cli", "serve", "--db", db_url,
                                 "--listen", "127.0.0.1:0", "--writer-process"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not _children(proc.pid) and time.monotonic() < deadline:  # the writer is spawned
                time.sleep(0.005)
            assert _children(proc.pid), "no writer process spawned"
            time.sleep(delay_s)
            os.killpg(proc.pid, signal.SIGTERM)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text_ = log.read_text(errors="replace")
    assert code in (-signal.SIGTERM, 0), text_
    assert "startup failed" not in text_ and "Traceback" not in text_, text_


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


def _batch_in_a_stopped_childs_hand(writer: WriterProcess) -> tuple[int, threading.Thread, dict[str, Any]]:
    """Start the child, stop it (SIGSTOP), and send it a batch from a thread, which then waits for the
    answer: (the child's pid, the thread, where the thread puts the result or the exception as "write")."""
    writer.start()
    assert writer.process is not None and writer.process.pid is not None
    pid = writer.process.pid
    os.kill(pid, signal.SIGSTOP)
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["write"] = writer._round_trip([(make_report("web01.example.com"), b"{}", BASE_TIME)], [None])
        except Exception as e:
            outcome["write"] = e

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not writer._receiving and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer._receiving
    return pid, thread, outcome


def test_stop_with_a_hung_child_holding_a_batch_returns_and_fails_the_batch(
        writer: WriterProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutdown while the child hangs (stopped here) with a batch in hand: stop() kills it after
    STOP_TIMEOUT_S instead of waiting for the batch's answer forever, and the batch gets its 503."""
    monkeypatch.setattr(writer_process, "STOP_TIMEOUT_S", 0.5)
    pid, sender, outcome = _batch_in_a_stopped_childs_hand(writer)
    stopper = threading.Thread(target=writer.stop, daemon=True)
    stopper.start()
    stopper.join(5)
    hung = stopper.is_alive()
    if hung:  # let the test end: the child's death frees both threads
        os.kill(pid, signal.SIGKILL)
        stopper.join(10)
    assert not hung, "stop() waited for a hung child's answer"
    sender.join(5)
    assert isinstance(outcome.get("write"), DatabaseError), outcome
    assert writer.process is None


def test_stop_returns_when_the_reader_sees_the_killed_childs_eof_only_after_stop_waits_for_it(
        writer: WriterProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race that once hung a CI run: stop() killed the hung child and waited for the pipe's reader to
    finish, and the reader, scheduled late, saw the EOF only then: it must wake stop() (here it is made
    late on purpose: its EOF is held for 1 s)."""
    monkeypatch.setattr(writer_process, "STOP_TIMEOUT_S", 0.5)
    writer.start()
    assert writer.pipe is not None
    pipe, recv = writer.pipe, writer.pipe.recv

    def late_eof() -> Any:
        try:
            return recv()
        except (EOFError, OSError):
            time.sleep(1.0)
            raise

    monkeypatch.setattr(pipe, "recv", late_eof)
    _, sender, outcome = _batch_in_a_stopped_childs_hand(writer)
    stopper = threading.Thread(target=writer.stop, daemon=True)
    stopper.start()
    stopper.join(6)
    hung = stopper.is_alive()
    if hung:  # let the test end: wake the waiter
        with writer._state:
            writer._state.notify_all()
        stopper.join(5)
    assert not hung, "stop() was not woken by the reader's EOF"
    sender.join(5)
    assert isinstance(outcome.get("write"), DatabaseError), outcome


def test_a_batch_that_cannot_be_encoded_fails_alone_and_the_next_batch_is_answered(
        engine: Engine, writer: WriterProcess) -> None:
    """A batch that cannot cross the pipe fails with its own error; it took no ticket, so the next batch
    does not wait for an answer that never comes."""
    writer.start()
    odd = [(make_report("web01.example.com"), b"{}", lambda: None)]
    with pytest.raises(TypeError, match="unsupported"):  # msgspec's refusal of a function
        writer._round_trip(odd, [None])  # type: ignore[arg-type]
    outcome: dict[str, Any] = {}

    def call() -> None:
        outcome["write"] = writer._round_trip([(make_report("web02.example.com"), b"{}", BASE_TIME)], [None])

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(5)
    hung = thread.is_alive()
    if hung:
        assert writer.process is not None and writer.process.pid is not None
        os.kill(writer.process.pid, signal.SIGKILL)
        thread.join(10)
    assert not hung, "the next batch waited for the unsent batch's answer"
    assert outcome == {"write": [True]} and count(engine, runs) == 1 and writer.starts == 1


def test_a_sigterm_to_the_whole_group_leaves_the_child_to_finish_its_batch(
        engine: Engine, writer: WriterProcess) -> None:
    """`systemctl stop` (the unit's default KillMode=control-group) sends SIGTERM to every process of the
    service: the parent shuts down gracefully and stops its child itself, so the child must not die with
    the batch in hand (the thread writer would answer it 201)."""
    pid, thread, outcome = _batch_in_a_stopped_childs_hand(writer)  # in hand when the signal comes
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGCONT)
    thread.join(20)
    assert outcome == {"write": [True]} and writer.starts == 1 and count(engine, runs) == 1


def test_two_batches_larger_than_the_pipes_buffer_cross_both_ways_at_once(
        engine: Engine, writer: WriterProcess) -> None:
    """Two batches of megabytes in flight at once (far over the socket's buffer): the second's sender
    blocks until the child reads it, while the first's receiver takes its answer; neither deadlocks."""
    writer.start()
    body = b"{" + b" " * (3 * 1024 * 1024) + b"}"
    batches = {name: [(make_report(f"{name}{i}.example.com"), body, BASE_TIME) for i in range(2)]
               for name in ("first", "second")}
    outcomes: dict[str, Any] = {}

    def call(name: str) -> None:
        try:
            outcomes[name] = writer._round_trip(batches[name], [None, None])
        except Exception as e:
            outcomes[name] = e

    threads = [threading.Thread(target=call, args=(name,), daemon=True) for name in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes == {"first": [True, True], "second": [True, True]}
    assert count(engine, runs) == 4 and writer.starts == 1


def test_an_idle_child_ends_at_sigterm(writer: WriterProcess) -> None:
    """multiprocessing terminates (SIGTERM) and joins a daemonic child still running when the parent
    exits: an idle child must end then, or the exit waits for ever."""
    writer.start()
    assert writer.process is not None
    writer.process.terminate()
    writer.process.join(5)
    assert not writer.process.is_alive()


def test_a_child_that_cannot_be_spawned_costs_the_batch_a_503(
        engine: Engine, writer: WriterProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """fork/exec refused (EAGAIN: the service's TasksMax, or no memory): the batch gets 503, "retry", as
    for a child that died, not a 500; the next batch spawns one."""
    import errno
    import multiprocessing.context

    def refused(self: Any) -> None:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", refused)
    items = [(make_report("web01.example.com"), b"{}", BASE_TIME)]
    with pytest.raises(DatabaseError, match="writer process"):
        writer._round_trip(items, [None])
    monkeypatch.undo()
    assert writer._round_trip(items, [None]) == [True] and count(engine, runs) == 1


def test_a_batch_crosses_the_pipe_as_the_same_values_of_the_same_types() -> None:
    """The batch's MessagePack form reads back as what was sent, record by record, types, enums and time
    zones included (repr compares them), for reports built by both parsers (msgspec's fast path and
    report.from_dict) holding every record type."""
    import json

    from agent.collector.payload import PayloadLimits, parse_report
    from agent.report import from_dict
    from tests.collector.test_payload import _full_report
    data = _full_report()
    fast = parse_report(json.dumps(data).encode(), PayloadLimits())
    slow = from_dict(_full_report())
    plain = make_report("web01.example.com")
    items = [(fast, b'{"a": 1}', BASE_TIME), (slow, b"", BASE_TIME), (plain, bytes(range(256)), BASE_TIME)]
    hashes = ["ab" * 32, None, "cd" * 32]
    back = writer_process._BATCH_DECODER.decode(writer_process._BATCH_ENCODER.encode((items, hashes)))
    assert repr(back) == repr((items, hashes)) and back == (items, hashes)
