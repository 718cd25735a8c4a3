"""`serve --writer-process`: the group commit's batches stored by a child process of the collector.

With one collector process, the batch writer (`store.ingest_group`: the drift review, the host upserts,
compression, the statements) runs in a worker thread and holds the GIL for about half of a report's CPU,
so the requests' HTTP and parsing wait for it on the same core. Here a child process stores the batches
instead: the serving process parses and checks each report as before (every 4xx is its answer), hands
the batch's parsed reports to the child over a pipe (pickled, ~30 us per report both ways), and answers
each request only when the child says the batch's transaction committed (the 201 still means stored).
The two processes then use two cores (docs/scale.md, "A writer process").

One batch is in the pipe at a time (GroupCommit drains one batch at a time). The child builds its own
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
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread
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
START_TIMEOUT_S = 60.0  # the child imports the collector and opens its engine before it says ready
STOP_TIMEOUT_S = 10.0


def database_url(engine: Engine) -> str:
    """The URL a child process opens: the engine's, password included. Raises CollectorError for a
    private database (SQLite in memory), which no other process can open."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and (not url.database or url.database == ":memory:"):
        raise CollectorError("--writer-process needs a database another process can open (a SQLite file "
                             "or PostgreSQL), not an in-memory SQLite database")
    return url.render_as_string(hide_password=False)


class WriterProcess:
    """The child that stores batches: `write()` has `store.ingest_group`'s contract (a result per report,
    or an exception for the whole batch) and raises DatabaseError (503) when the child died before it
    answered. Thread-safe; started on the first `write()` or by `start()`."""

    def __init__(self, url: str, expect: Expectations) -> None:
        self.url, self.expect = url, expect
        self.process: BaseProcess | None = None
        self.pipe: Pipe | None = None
        self.starts = 0  # children started so far (a restart after a death counts)
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    def start(self) -> None:
        """Start the child unless it runs, and wait until it has opened the database. Raises DatabaseError
        when it exits or stays silent for START_TIMEOUT_S."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> Pipe:
        if self.process is not None and self.pipe is not None and self.process.is_alive():
            return self.pipe
        self._reap()
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        level = logging.getLogger().getEffectiveLevel()
        process = context.Process(target=_child, name="gitops-collector writer", daemon=True,
                                  args=(theirs, self.url, self.expect, level))
        process.start()
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

    def _round_trip(self, items: Batch, hashes: Sequence[str | None]) -> list[bool | Exception]:
        with self._lock:
            pipe = self._ensure()
            pid = self.process.pid if self.process is not None else None
            try:
                pipe.send((list(items), list(hashes)))
                kind, value = pipe.recv()
            except (EOFError, OSError) as e:
                code = self.process.exitcode if self.process is not None else None
                self._reap()
                log.error("writer process %s died during a batch of %d report(s) (exit code %s); their "
                          "senders get 503 and retry", pid, len(items), code)
                raise DatabaseError("the collector's writer process died; the report may or may not be "
                                    "stored: retry") from e
        if kind == "error":
            raise value
        results: list[bool | Exception] = value
        return results

    async def write(self, items: Batch, hashes: Sequence[str | None]) -> list[bool | Exception]:
        return await anyio.to_thread.run_sync(self._round_trip, items, hashes, limiter=self._limiter)

    def stop(self) -> None:
        """Ask the child to finish (it ends after the batch in hand) and wait for it; kill it after
        STOP_TIMEOUT_S."""
        with self._lock:
            if self.pipe is not None:
                with suppress(OSError):
                    self.pipe.send(None)
            self._reap()


def _child(pipe: Pipe, url: str, expect: Expectations, log_level: int) -> None:
    """The child's loop: (items, hashes) in, ("ok", results) or ("error", exception) out; None or the
    parent's end closing stops it."""
    from agent.collector import db, group_commit, store

    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    try:
        engine = db.create(url, pool_size=1)
        with engine.connect():
            pass
    except Exception as e:  # sent to the parent, which raises it
        pipe.send(DatabaseError(f"the writer process cannot open the database: {e}"))
        return
    pipe.send("ready")
    try:
        while True:
            try:
                message = pipe.recv()
            except EOFError:
                return  # the parent is gone
            if message is None:
                return
            items, hashes = message
            try:
                results = store.ingest_group(engine, items, expect=expect,
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
    await anyio.to_thread.run_sync(writer.start)
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(writer.stop)
