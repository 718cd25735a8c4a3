"""Group commit for ingest: reports that arrive while a commit runs are written together in the next one.

Request handlers call `GroupCommit.ingest()` and wait; one task at a time takes everything queued (at
most `max_batch` reports) to a database thread, which stores it with `store.ingest_batch` in one
transaction, then answers every waiting handler. No timer: under low load a batch is one report and
nothing waits longer than a lone commit; under load a batch is what arrived during the previous commit,
so there is one fsync and one thread hand-off per batch instead of per report. A handler is answered only
after its batch committed (docs/scale.md, "Ingest at 1,000 reports/s").
"""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime

import anyio
import anyio.to_thread
from sqlalchemy import Engine

from agent.collector import store
from agent.collector.store import Expectations
from agent.report import Report

Item = tuple[Report, bytes, datetime, "asyncio.Future[bool]"]


class GroupCommit:
    """One per collector process (and event loop); `ingest()` has the contract of `store.ingest`."""

    def __init__(self, engine: Engine, expect: Expectations, limiter: anyio.CapacityLimiter | None,
                 max_batch: int = 500) -> None:
        self.engine, self.expect, self.limiter, self.max_batch = engine, expect, limiter, max_batch
        self.queue: list[Item] = []
        self.writer: asyncio.Task[None] | None = None

    async def ingest(self, report: Report, raw: bytes, *, received_at: datetime) -> bool:
        """True: stored now; False: the same report was stored before. Raises what `store.ingest` raises."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.queue.append((report, raw, received_at, future))
        if self.writer is None or self.writer.done():
            self.writer = asyncio.get_running_loop().create_task(self._drain())
        # shield: a client that goes away does not cancel the batch (its report may be committed anyway)
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self.queue:
            batch, self.queue = self.queue[:self.max_batch], self.queue[self.max_batch:]
            items = [(report, raw, received_at) for report, raw, received_at, _ in batch]
            call = functools.partial(store.ingest_batch, self.engine, items, expect=self.expect)
            try:
                results = await anyio.to_thread.run_sync(call, limiter=self.limiter)
            except Exception as e:  # the transaction failed: nothing of the batch is stored
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (*_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
