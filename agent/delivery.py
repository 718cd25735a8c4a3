"""Reports to the collector: the outbox of one agent configuration, and flushing it.

Every finished attempt goes into the outbox (when a collector is configured) before delivery is tried;
`flush` delivers oldest first and leaves whatever could not be delivered for the next try. A report that
could not go into the outbox (a full or read-only file system) is handed to `flush` as `unspooled`: it is
sent from memory after the backlog, once, and is lost only if that fails too (the result says so).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from agent.config import AgentConfig
from agent.errors import AgentError
from agent.outbox import Outbox
from agent.report import Report, to_json

if TYPE_CHECKING:
    from agent.sender import FlushResult

log = logging.getLogger(__name__)


def outbox(config: AgentConfig) -> Outbox:
    return Outbox(config.state_dir / "outbox", max_reports=config.outbox.max_reports,
                  max_bytes=config.outbox.max_bytes)


def enqueue(config: AgentConfig, report: Report) -> None:
    """Spool the report for the collector (nothing to do when no collector is configured). StateError
    when the outbox cannot take it."""
    if config.collector.url:
        outbox(config).put(report)


def flush(config: AgentConfig, *, deadline_s: float, max_attempts: int = 4,
          unspooled: Sequence[Report] = ()) -> FlushResult | None:
    """Deliver what waits in the outbox, then the `unspooled` reports from memory; None when no collector
    is configured or nothing waits."""
    box = outbox(config)
    if not config.collector.url or not (box.pending() or unspooled):
        return None
    from agent.sender import FlushResult, Sender  # httpx: only when there is something to send

    started = time.monotonic()
    try:
        with Sender.from_config(config.collector, max_attempts=max_attempts) as sender:
            result = sender.flush(box, deadline_s=deadline_s)
            lost = [r.run_id for r in unspooled if not sender.deliver_body(
                to_json(r).encode("utf-8"), deadline_s=max(deadline_s - (time.monotonic() - started), 1.0))]
    except AgentError as e:  # token file missing or unsafe: say so, keep the reports
        log.error("cannot deliver reports: %s", e)
        return FlushResult(remaining=len(box.pending()), error=str(e),
                           lost=tuple(r.run_id for r in unspooled))
    if unspooled:
        result = dataclasses.replace(result, delivered=result.delivered + len(unspooled) - len(lost),
                                     lost=tuple(lost))
    log.info("outbox flushed: delivered=%d duplicates=%d quarantined=%d remaining=%d%s", result.delivered,
             result.duplicates, result.quarantined, result.remaining,
             f" error={result.error!r}" if result.error else "")
    return result
