"""One leader among the collector processes that share a database (docs/scale.md, "Several collectors on
one PostgreSQL"): the work that must run exactly once across them (alert evaluation and webhook deliveries,
the heads poll, `serve --prune-older-than`, the compliance snapshot) runs only in the process
that holds the lead.

- PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock(ADVISORY_KEY)`) held on a dedicated
  connection. The lock lives as long as that connection: when the leader dies (even by SIGKILL) the server
  closes its session and the lock is free; the next follower to try (each leader-only loop tries again at
  its own pace: `--notify-interval`, `--heads-poll`) takes it. `fence()` gives an SQL condition that is true
  only while this process's session still holds the lock, so a row claimed under it (a webhook delivery)
  can never be claimed by a process that lost the lead without knowing it yet.
- SQLite: an exclusive `flock` on `<database>.leader` (one collector host; with `serve --workers N` one
  worker of N); the kernel frees it when the process dies. A private database (`:memory:`) always leads.

`Leader.leading` is what the last try found (None before any try): /healthz and /metrics show it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING

import anyio
import anyio.to_thread
from sqlalchemy import Connection, Engine, TextClause, text
from sqlalchemy.engine import make_url
from starlette.applications import Starlette

from agent.collector import store

if TYPE_CHECKING:
    from agent.collector.context import Collector

log = logging.getLogger(__name__)

ADVISORY_KEY = 0x6769746F7073  # "gitops": the one PostgreSQL advisory lock of the collectors' leader
PRUNE_EVERY_S = 3600.0  # how often the leader runs `serve --prune-older-than`


@dataclass
class Leader:
    """The lead of one collector process. `try_lead()` takes (or keeps) it: True while held. Thread-safe:
    every leader-only loop calls it from a worker thread."""

    engine: Engine
    leading: bool | None = None
    since: float | None = None  # time.monotonic() when this process last became leader
    _file: IO[bytes] | None = None
    _conn: Connection | None = None
    _pid: int | None = None  # the lock session's backend pid (PostgreSQL)
    _mutex: threading.Lock = field(default_factory=threading.Lock)

    def try_lead(self) -> bool:
        with self._mutex:
            held = self._sqlite() if self.engine.dialect.name == "sqlite" else self._postgresql()
            if held and not self.leading:
                self.since = time.monotonic()
            self.leading = held
            return held

    def _sqlite(self) -> bool:
        if self._file is not None:
            return True
        database = make_url(self.engine.url).database
        if not database or database == ":memory:":
            return True  # a private database: this process is the only one
        handle = Path(f"{database}.leader").open("ab")  # noqa: SIM115 (held while leading)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def _postgresql(self) -> bool:
        if self._conn is not None:
            try:  # still ours? (the connection may have been cut, and the lock with it)
                self._conn.execute(text("SELECT 1"))
                self._conn.commit()
                return True
            except Exception:
                log.warning("leader: the lock's database connection is gone; this process no longer leads")
                self._drop()
        conn = self.engine.connect()
        try:
            held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}).scalar())
            pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one()) if held else None
            conn.commit()
        except Exception:
            conn.close()
            raise
        if not held:
            conn.close()  # holds nothing: back to the pool
            return False
        self._conn, self._pid = conn, pid
        return True

    def fence(self) -> TextClause | None:
        """PostgreSQL, while this process holds the lock: an SQL condition true only as long as its lock
        session is alive and holds the lock (pg_locks), to put in the WHERE of a claim. None on SQLite (the
        flock is only ever lost with the process) and when this process never led (one process alone)."""
        pid = self._pid
        if pid is None:
            return None
        # a bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1
        return text("EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = :leader_pid AND classid::bigint = :key_hi AND objid::bigint = :key_lo "
                    "AND objsubid = 1)").bindparams(leader_pid=pid, key_hi=ADVISORY_KEY >> 32,
                                                    key_lo=ADVISORY_KEY & 0xFFFFFFFF)

    def _drop(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                # closes the database connection itself (not back to the pool), and the lock with it
                self._conn.invalidate()
                self._conn.close()
            self._conn, self._pid = None, None

    def release(self) -> None:
        """Let go of the lead (a stopping process; tests): another process may take it at its next try.

        PostgreSQL: the lock is given back with `pg_advisory_unlock` before its connection is closed, so it
        is free when this returns; closing alone frees it only once the server's backend has noticed the
        closed socket and exited, a moment later (a follower trying at once could still find it held)."""
        with self._mutex:
            if self._conn is not None:
                try:
                    self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                    self._conn.commit()
                except Exception:  # the connection is gone, and its lock with it once the server notices
                    log.warning("leader: could not unlock on release; the lock goes with its connection")
            self._drop()
            if self.leading:
                self.leading = False


# -- the leader's own housekeeping: `serve --prune-older-than` ------------------------------------

async def prune_loop(collector: Collector, older_than_s: float) -> None:
    """While this process leads: prune runs finished more than `older_than_s` ago, at once on taking the
    lead and then every PRUNE_EVERY_S; followers try for the lead every `--notify-interval`."""
    last: float | None = None
    while True:
        try:
            leading = await anyio.to_thread.run_sync(collector.leader.try_lead)
            if not leading:
                last = None
            elif last is None or time.monotonic() - last >= PRUNE_EVERY_S:
                cutoff = collector.now() - timedelta(seconds=older_than_s)
                pruned = await collector.db(store.prune, collector.engine, older_than=cutoff)
                last = time.monotonic()
                log.info("prune: %d run(s) finished before %s", pruned, cutoff.isoformat())
        except Exception:  # the loop outlives a failed round (database down): retried next time
            collector.metrics.db_errors += 1
            log.exception("prune failed")
        await anyio.sleep(collector.settings.notify_interval_s)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Runs the prune loop beside the app while `serve --prune-older-than` is given; lets go of the lead
    when the app stops (so a follower takes over at its next try, not only when this process is gone)."""
    collector: Collector = app.state.collector
    try:
        if collector.settings.prune_older_than_s is None:
            yield
            return
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(prune_loop, collector, collector.settings.prune_older_than_s)
            yield
            tasks.cancel_scope.cancel()
    finally:
        collector.leader.release()
