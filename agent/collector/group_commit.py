"""Group commit for ingest: reports that arrive while a commit runs are written together in the next one.

Request handlers call `GroupCommit.ingest()` and wait; one task at a time takes everything queued (at
most `max_batch` reports and `max_batch_bytes` of their bodies, at least one) to a database thread, which
stores it with `store.ingest_batch` in one transaction, then answers every waiting handler. No timer:
under low load a batch is one report and nothing waits longer than a lone commit; under load a batch is
what arrived during the previous commit, so there is one fsync and one thread hand-off per batch instead
of per report. A handler is answered only after its batch committed (docs/scale.md, "Ingest at 1,000
reports/s").

The batch is written by `store.ingest_group` (batched statements). Token checks: `principal()` answers from
a per-process map and asks the database only on a miss: a valid token's entry lives VALID_CACHE_S (a token's
host and kind never change; at 1,000 hosts reporting once a second each a 1 s entry would always miss), an
unknown one's CACHE_S (so a token just created works within a second). Misses are looked up together, as
reports are stored: one task asks the database for every token missed since its last lookup, in one worker
thread and one read (`tokens.principals_of`). When a collector starts, each of its agents' first reports
misses; one thread hand-off and query each made 1,000 agents wait up to a second or more in the first
seconds (docs/scale.md, section 2, "Tenth pass"). Revocation still takes effect at
once, because the batch's transaction checks every report's token again (one SELECT for the batch) and
refuses, with 401, the reports of a token revoked since; and a request refused before it reaches a batch
(a body that is too large, not a report, another host's) asks the database again (`confirm`), so a revoked
token gets 401 there too, never the body's error (the agent's `doctor` reads a 400 as "token accepted").
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from sqlalchemy import Connection, Engine, bindparam, select

from agent.collector import store, tokens
from agent.collector.errors import UnauthorizedError
from agent.collector.store import Expectations
from agent.collector.tables import tokens as tokens_table
from agent.collector.tokens import Principal
from agent.report import Report

if TYPE_CHECKING:
    from agent.collector.writer_process import WriterProcess

Item = tuple[Report, bytes, datetime, "asyncio.Future[bool]", str | None]
CACHE_S = 1.0
VALID_CACHE_S = 300.0
VALID = select(tokens_table.c.token_hash).where(
    tokens_table.c.token_hash.in_(bindparam("hashes", expanding=True)), tokens_table.c.revoked_at.is_(None))


class GroupCommit:
    """One per collector process (and event loop); `ingest()` has the contract of `store.ingest`."""

    def __init__(self, engine: Engine, expect: Expectations, limiter: anyio.CapacityLimiter | None,
                 max_batch: int = 500, max_batch_bytes: int = 8 * 1024 * 1024) -> None:
        self.engine, self.expect, self.limiter, self.max_batch = engine, expect, limiter, max_batch
        self.max_batch_bytes = max_batch_bytes
        self.queue: list[Item] = []
        self.drains: list[asyncio.Task[None]] = []  # the tasks taking batches off the queue
        self.max_in_flight = 1  # batches being stored at once (a writer process takes the next one in line)
        self.principals: dict[str, tuple[float, Principal | None]] = {}
        self.lookups = 0  # database reads of missed tokens so far (each for every miss queued before it)
        self._missed: dict[str, asyncio.Future[Principal | None]] = {}  # token hash -> its lookup's answer
        self._looking_up: asyncio.Task[None] | None = None  # the task asking the database for them
        self.writer_process: WriterProcess | None = None  # serve --writer-process (writer_process.py)

    async def principal(self, secret: str) -> tuple[Principal | None, str]:
        """The token's principal (None: unknown or revoked) and its hash, from the map when the entry is
        younger than CACHE_S (VALID_CACHE_S for a valid token), else from the database, in the next lookup
        of the tokens missed meanwhile. Raises what the database raises."""
        key_hash = tokens.hash_token(secret)
        hit = self.principals.get(key_hash)
        if hit is not None and time.monotonic() - hit[0] < (CACHE_S if hit[1] is None else VALID_CACHE_S):
            return hit[1], key_hash
        answer = self._missed.get(key_hash)
        if answer is None:
            answer = self._missed[key_hash] = asyncio.get_running_loop().create_future()
            if self._looking_up is None or self._looking_up.done():
                self._looking_up = asyncio.get_running_loop().create_task(self._look_up())
        # shielded: the answer may be awaited by several requests, and one going away must not cancel it
        return await asyncio.shield(answer), key_hash

    async def _look_up(self) -> None:
        """Answer the missed tokens: all those queued, in one database read, until none is queued."""
        missed: dict[str, asyncio.Future[Principal | None]] = {}
        try:
            while self._missed:
                missed, self._missed = self._missed, {}
                self.lookups += 1
                asked_at = time.monotonic()  # an entry's age counts from before the read, as a hit's does
                try:
                    found = await anyio.to_thread.run_sync(tokens.principals_of, self.engine, list(missed),
                                                           limiter=self.limiter)
                except Exception as e:  # each waiting request fails with it; the next miss asks again
                    for answer in missed.values():
                        answer.set_exception(e)
                        answer.exception()  # read here: when every request went away, nothing else reads it
                    continue
                if len(self.principals) + len(missed) > 100_000:
                    self.principals.clear()
                for key_hash, answer in missed.items():
                    self.principals[key_hash] = (asked_at, found.get(key_hash))
                    answer.set_result(found.get(key_hash))
        finally:  # cancelled (the loop ends) or worse: no request waits for an answer that never comes
            for answer in (*missed.values(), *self._missed.values()):
                answer.cancel()  # an answered one keeps its answer
            self._missed = {key: answer for key, answer in self._missed.items() if not answer.done()}

    async def confirm(self, secret: str) -> None:
        """Ask the database again, whatever the map holds: raises UnauthorizedError when the token is
        unknown or revoked now (and keeps that answer in the map)."""
        found = await anyio.to_thread.run_sync(tokens.authenticate, self.engine, secret, limiter=self.limiter)
        self.principals[tokens.hash_token(secret)] = (time.monotonic(), found)
        if found is None:
            raise UnauthorizedError("unknown or revoked token")

    async def ingest(self, report: Report, raw: bytes, *, received_at: datetime,
                     token_hash: str | None = None) -> bool:
        """True: stored now; False: the same report was stored before. Raises what `store.ingest` raises,
        and UnauthorizedError when `token_hash` was revoked before the batch's commit. `report` has passed
        `store.check_storable` (api.post_report checks it first): the batch does not check it again."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.queue.append((report, raw, received_at, future, token_hash))
        self.drains = [task for task in self.drains if not task.done()]
        if len(self.drains) < self.max_in_flight:
            self.drains.append(asyncio.get_running_loop().create_task(self._drain()))
        # a client that goes away cancels only this future: the batch is the writer task's, and commits (the
        # writer skips a future that is done); no asyncio.shield, whose extra future costs every report
        return await future

    async def _drain(self) -> None:
        while self.queue:
            batch, self.queue = self._take()
            items = [(report, raw, received_at) for report, raw, received_at, _, _ in batch]
            hashes = [h for *_, h in batch]
            call = functools.partial(store.ingest_group, self.engine, items, expect=self.expect,
                                     revoked=functools.partial(revoked, hashes), checked=True)
            try:
                if self.writer_process is not None:  # serve --writer-process: a child stores the batch
                    results = await self.writer_process.write(items, hashes)
                else:
                    results = await anyio.to_thread.run_sync(call, limiter=self.limiter)
            except Exception as e:  # the transaction failed: nothing of the batch is stored
                for *_, future, _ in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (*_, future, token_hash), result in zip(batch, results, strict=True):
                if isinstance(result, UnauthorizedError) and token_hash is not None:
                    self.principals.pop(token_hash, None)  # revoked: the next request asks the database
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


    def _take(self) -> tuple[list[Item], list[Item]]:
        """(the next batch, what stays queued): the queue's first reports up to max_batch of them and
        max_batch_bytes of their bodies (the rows, and the statements' parameters, are held in memory until
        the commit), and at least one."""
        count = size = 0
        for _, raw, *_ in self.queue[:self.max_batch]:
            if count and size + len(raw) > self.max_batch_bytes:
                break
            size, count = size + len(raw), count + 1
        return self.queue[:count], self.queue[count:]


def revoked(hashes: Sequence[str | None], conn: Connection) -> set[int]:
    """Indexes of the batch's reports whose token is unknown or revoked now (in the batch's transaction)."""
    asked = sorted({h for h in hashes if h is not None})
    valid = set(conn.execute(VALID, {"hashes": asked}).scalars()) if asked else set()
    return {i for i, h in enumerate(hashes) if h is not None and h not in valid}
