"""`serve --writer-process`: the group commit's batches stored by a child process of the collector.

With one collector process, the batch writer (`store.ingest_group`: the drift review, the host upserts,
compression, the statements) runs in a worker thread and holds the GIL for about half of a report's CPU,
so the requests' HTTP and parsing wait for it on the same core. Here a child process stores the batches
instead: the serving process parses and checks each report as before (every 4xx is its answer), hands
the batch's parsed reports to the child over a pipe (MessagePack, see _BATCH_ENCODER), and answers
each request only when the child says the batch's transaction committed (the 201 still means stored).
The two processes then use two cores (docs/scale.md, section 2, "Fifth pass").

Two batches are in the pipe at a time (GroupCommit runs two drains with a writer process): the child
stores them in the order sent, so the next one waits while it commits one. The child builds its own
engine from the database URL (spawned, not forked: nothing of the parent's pool or threads is shared).
When the child dies mid-batch its requests get 503 ("retry"): the batch may or may not have committed,
and an agent's retry of a committed report is answered 200 (duplicate run_id), so nothing is stored twice
and nothing answered 201 is lost. The next batch starts a new child. SQLite: the child is one more writer
of the database file; it takes SQLite's lock once per batch, other writers of the collector meet its busy
timeout meanwhile.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import pickle
import signal
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread
import msgspec
from sqlalchemy import Engine
from starlette.applications import Starlette

from agent.collector.errors import CollectorError, DatabaseError
from agent.collector.store import Expectations
from agent.report import Report

if TYPE_CHECKING:
    from agent.collector.context import Collector

log = logging.getLogger(__name__)

T = TypeVar("T")
Batch = Sequence[tuple[Report, bytes, datetime]]
# how a child stopped by SIGTERM ends: killed by it before its handler is in place, or by the handler
STOPPED = (-signal.SIGTERM, 0)
START_TIMEOUT_S = 60.0  # the child imports the collector and opens its engine before it says ready
STOP_TIMEOUT_S = 10.0
IN_FLIGHT = 2  # batches in the pipe at once (GroupCommit.max_in_flight follows it)


# A batch crosses the pipe as MessagePack, written and read by msgspec against its types: about 4 us a
# report in the serving process against pickle's 19, and no slower to read in the child (bench/README.md,
# "Sixth pass"). Every value of a parsed report has a MessagePack form msgspec reads back as the same type:
# records, enums by value, tuples, JSON values, aware UTC times (as timestamps; tests/collector/
# test_writer_process.py compares a round trip). Answers, with their exceptions, stay pickled.
_BATCH_ENCODER = msgspec.msgpack.Encoder()
_BATCH_DECODER = msgspec.msgpack.Decoder(tuple[list[tuple[Report, bytes, datetime]], list[str | None]])


def database_url(engine: Engine) -> str:
    """The URL a child process opens: the engine's, password included. Raises CollectorError for a
    private database (SQLite in memory), which no other process can open."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and _in_memory(url.database, dict(url.query)):
        raise CollectorError("--writer-process needs a database another process can open (a SQLite file "
                             "or PostgreSQL), not an in-memory SQLite database")
    return url.render_as_string(hide_password=False)


def _in_memory(database: str | None, query: dict[str, object]) -> bool:
    """Whether a SQLite database name opens memory rather than a file: none, ":memory:", or a URI
    filename (`file::memory:?cache=shared`, `file:name?mode=memory`; https://sqlite.org/inmemorydb.html),
    whose query SQLAlchemy may have split off into the URL's query."""
    if not database or database == ":memory:":
        return True
    if not database.startswith("file:"):
        return False
    name, _, own_query = database.partition("?")
    modes = {str(query.get("mode", ""))}
    modes |= {part.removeprefix("mode=") for part in own_query.split("&") if part.startswith("mode=")}
    return name == "file::memory:" or "memory" in modes


class WriterProcess:
    """The child that stores batches: `write()` has `store.ingest_group`'s contract (a result per report,
    or an exception for the whole batch) and raises DatabaseError (503) when the child died before it
    answered. Thread-safe; started on the first `write()` or by `start()`.

    Up to IN_FLIGHT batches are in the pipe at once: the child stores them in the order sent and answers
    in that order, so the next batch is already waiting when it commits one (while the parent takes the
    answers and sends the next, and while the commit's fsync runs, the child would otherwise idle). Each
    caller takes its answer in its turn (a ticket per batch sent to the current child)."""

    def __init__(self, url: str, expect: Expectations) -> None:
        self.url, self.expect = url, expect
        self.process: BaseProcess | None = None
        self.pipe: Pipe | None = None
        self.starts = 0  # children started so far (a restart after a death counts)
        self._send_lock = threading.Lock()  # one sender at a time (a batch is written whole)
        self._state = threading.Condition()  # guards what follows; waited on for one's turn to receive
        self._generation = 0  # which child the tickets are for: a new one after a death or a restart
        self._broken = False  # the current child's pipe failed: start another before the next batch
        self._sent = self._received = 0  # tickets handed out and answers taken, of the current child
        self._receiving = False  # a caller is reading the pipe (its fd must stay open until it is done)
        self._limiter = anyio.CapacityLimiter(IN_FLIGHT)
        self.last_exitcode: int | None = None  # of the last child reaped (multiprocessing's: -N for signal N)

    def start(self) -> None:
        """Start the child unless it runs, and wait until it has opened the database. Raises DatabaseError
        when it exits or stays silent for START_TIMEOUT_S."""
        with self._send_lock, self._state:
            self._ensure()

    def _ensure(self) -> Pipe:
        """The current child's pipe; a new child when there is none or it died (callers hold both locks)."""
        running = self.process is not None and self.process.is_alive()
        if running and self.pipe is not None and not self._broken:
            return self.pipe
        while self._receiving:  # a reader of the dead child's pipe finishes (EOF) before its fd is closed
            self._state.wait()
        self._generation += 1  # any ticket of the old child still waiting gets 503
        self._sent = self._received = 0
        self._broken = False
        self._state.notify_all()
        self._reap()
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        level = logging.getLogger().getEffectiveLevel()
        process = context.Process(target=_child, name="gitops-collector writer", daemon=True,
                                  args=(theirs, self.url, self.expect, level))
        try:
            process.start()
        except OSError as e:  # fork/exec refused (EAGAIN at the service's TasksMax, ENOMEM): a 503, retry
            ours.close()
            raise DatabaseError(f"the writer process could not be started ({e}); retry") from e
        finally:
            theirs.close()
        self.process, self.pipe = process, ours
        self.starts += 1
        try:
            if not ours.poll(START_TIMEOUT_S):
                raise DatabaseError(f"the writer process did not start within {START_TIMEOUT_S:.0f}s")
            ready = ours.recv()
        except (EOFError, OSError) as e:
            self._reap()
            raise DatabaseError(f"the writer process exited while starting ({e or 'no answer'})") from e
        except DatabaseError:
            self._reap()
            raise
        if ready != "ready":  # the child could not open the database: it sent the error
            self._reap()
            raise ready if isinstance(ready, Exception) else DatabaseError(str(ready))
        log.info("writer process %d started", process.pid)
        return ours

    def _reap(self) -> None:
        process, pipe = self.process, self.pipe
        self.process = self.pipe = None
        if pipe is not None:
            pipe.close()
        if process is not None:
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
            self.last_exitcode = process.exitcode

    def _died(self, generation: int, reports: int) -> DatabaseError:
        """The pipe of child `generation` failed (callers hold `_state`): the error for each caller of it."""
        if generation == self._generation and not self._broken:
            self._broken = True
            self._state.notify_all()  # the other tickets of this child give up
            process = self.process
            pid, code = (process.pid, process.exitcode) if process is not None else (None, None)
            log.error("writer process %s died with %d batch(es) in hand (exit code %s); their senders get "
                      "503 and retry", pid, self._sent - self._received, code)
        return DatabaseError(f"the collector's writer process died with a batch of {reports} report(s) in "
                             "hand; the report may or may not be stored: retry")

    def _round_trip(self, items: Batch, hashes: Sequence[str | None]) -> list[bool | Exception]:
        # encoded before a ticket is taken: a batch that cannot cross fails alone, with its own error (a
        # ticket whose batch was never sent would keep every later caller waiting for its answer)
        data = _BATCH_ENCODER.encode((items, hashes))
        with self._send_lock:
            with self._state:
                pipe, generation = self._ensure(), self._generation
                ticket, self._sent = self._sent, self._sent + 1
            try:
                pipe.send_bytes(data)
            except Exception as e:  # maybe written in part: the child's stream is out of step, replace it
                with self._state:
                    raise self._died(generation, len(items)) from e
        with self._state:
            while generation == self._generation and not self._broken and self._received != ticket:
                self._state.wait()
            if generation != self._generation or self._broken:
                raise self._died(generation, len(items))
            self._receiving = True
        try:
            kind, value = pipe.recv()
        except Exception as e:  # EOF, a reset, or an answer that does not unpickle: the child is lost
            with self._state:
                self._receiving = False
                self._state.notify_all()  # stop() and _ensure() wait for the reader to be done with the pipe
                raise self._died(generation, len(items)) from e
        with self._state:
            self._receiving = False
            self._received += 1
            self._state.notify_all()
        if kind == "error":
            raise value
        results: list[bool | Exception] = value
        return results

    async def write(self, items: Batch, hashes: Sequence[str | None]) -> list[bool | Exception]:
        return await anyio.to_thread.run_sync(self._round_trip, items, hashes, limiter=self._limiter)

    def stop(self) -> None:
        """Let the child answer the batches in hand and finish, and wait for it; kill it when it has not
        within STOP_TIMEOUT_S (a hung child: the callers still waiting then get 503, and shutdown does not
        wait for an answer that never comes)."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        with self._state:
            while self.pipe is not None and not self._broken and self._received < self._sent:
                if not self._state.wait(max(0.0, deadline - time.monotonic())):
                    break
            answered, process = self._received == self._sent, self.process
        # the pipe is empty once every batch is answered, so asking the child to end cannot block on it
        if answered and self._send_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            try:
                with self._state:
                    if self.pipe is not None:
                        with suppress(OSError):
                            self.pipe.send_bytes(b"")
            finally:
                self._send_lock.release()
        if process is not None:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        # the child is gone: a sender or receiver of its pipe fails at once (503) before the pipe is closed
        with self._send_lock, self._state:
            self._generation += 1
            self._state.notify_all()
            while self._receiving:
                self._state.wait()
            self._reap()


def _child(pipe: Pipe, url: str, expect: Expectations, log_level: int) -> None:
    """The child's loop: a batch, (items, hashes) in MessagePack, in; ("ok", results) or ("error",
    exception), pickled, out; an empty message or the parent's end closing stops it."""
    from agent.collector import db, group_commit, store
    from agent.collector.heap import freeze_startup_heap

    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    # Ctrl-C reaches the whole group: the parent stops us through the pipe once its batches are answered.
    # So does `systemctl stop`'s SIGTERM (KillMode=control-group), which must not cost the batches in hand
    # (sent, maybe not read yet) their commit: we end at once only when idle with nothing in the pipe, else
    # after storing what the pipe holds. (A SIGTERM must still end us: multiprocessing terminates and joins
    # a daemonic child left running at the parent's exit.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    idle, stopping = True, False

    def terminate(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if idle and not pipe.poll():
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    try:
        engine = db.create(url, pool_size=1)
        with engine.connect():
            pass
    except Exception as e:  # sent to the parent, which raises it
        pipe.send(DatabaseError(f"the writer process cannot open the database: {e}"))
        return
    pipe.send("ready")
    freeze_startup_heap()
    try:
        while not stopping or pipe.poll():
            idle = True
            try:
                message = pipe.recv_bytes()
            except EOFError:
                return  # the parent is gone
            finally:
                idle = False
            if not message:
                return
            try:
                items, hashes = _BATCH_DECODER.decode(message)
                results = store.ingest_group(engine, items, expect=expect, checked=True,
                                             revoked=functools.partial(group_commit.revoked, hashes))
                reply: tuple[str, object] = ("ok", [_picklable(r) for r in results])
            except Exception as e:  # the whole batch failed: the parent raises it
                reply = ("error", _picklable(e))
            pipe.send(reply)
    finally:
        engine.dispose()


def _picklable(result: T) -> T | CollectorError:
    """`result` when it crosses the pipe as itself; an exception that does not pickle (a driver's, with
    unpicklable state) as a CollectorError of the same message and HTTP status (503 for the database's)."""
    if not isinstance(result, BaseException):
        return result
    try:
        pickle.loads(pickle.dumps(result))  # noqa: S301 (our own bytes, just made)
        return result
    except Exception:  # any failure to cross: replaced
        error = DatabaseError(str(result)) if not isinstance(result, CollectorError) else CollectorError(
            str(result))
        if isinstance(result, CollectorError):
            error.status = result.status
        return error


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """With `serve --writer-process`: start the child before the first request, stop it at shutdown."""
    collector: Collector = app.state.collector
    writer = collector.group.writer_process if collector.group is not None else None
    if writer is None:
        yield
        return
    try:
        await anyio.to_thread.run_sync(writer.start)
    except DatabaseError:
        if writer.last_exitcode not in STOPPED:
            raise
        # `systemctl stop` (SIGTERM to the unit's every process) while the child was still starting: the
        # server got it too and stops once started; this is no failure to start (which would fail the
        # unit's stop). Were only the child stopped, the next batch starts another, as after any death.
        log.warning("the writer process was stopped while starting (exit code %s); the next batch starts "
                    "another", writer.last_exitcode)
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(writer.stop)
