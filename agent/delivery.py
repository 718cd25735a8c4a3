"""Reports to the collector: the outbox of one agent configuration, and delivering it.

Every finished attempt goes into the outbox (when a collector is configured) before delivery is tried;
`deliver` sends the outbox oldest first and leaves whatever could not be delivered for the next try. A
report that could not go into the outbox (a full or read-only file system) is handed to `deliver` as
`unspooled`: it is sent from memory after the backlog, once, and is lost only if that fails too (the
result says so).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.config import AgentConfig
from agent.errors import AgentError
from agent.fsutil import atomic_write
from agent.outbox import Outbox
from agent.paths import StatePaths
from agent.report import Report, format_time, parse_time, to_json

if TYPE_CHECKING:
    from agent.sender import DeliveryResult

log = logging.getLogger(__name__)


def outbox(config: AgentConfig) -> Outbox:
    return Outbox(StatePaths(config.state_dir).outbox, max_reports=config.outbox.max_reports,
                  max_bytes=config.outbox.max_bytes)


def enqueue(config: AgentConfig, report: Report) -> None:
    """Spool the report for the collector (nothing to do when no collector is configured). StateError
    when the outbox cannot take it."""
    if config.collector.url:
        outbox(config).put(report)


@dataclass(frozen=True)
class DeliveryState:
    """How the last delivery attempt went (state_dir/delivery.json): `status` and `doctor` show it."""

    at: datetime
    error: str | None  # None: everything was delivered
    remaining: int


def last_state(config: AgentConfig) -> DeliveryState | None:
    """The last delivery attempt's outcome, or None (none yet, or no collector)."""
    try:
        data = json.loads(StatePaths(config.state_dir).delivery.read_text(encoding="utf-8"))
        return DeliveryState(parse_time(data["at"]), data.get("error"), int(data.get("remaining", 0)))
    except (OSError, ValueError, KeyError, TypeError, AgentError):
        return None


def _record(config: AgentConfig, error: str | None, remaining: int) -> None:
    data = {"at": format_time(datetime.now(UTC)), "error": error, "remaining": remaining}
    with contextlib.suppress(OSError):  # only a note for people: never fails a cycle
        atomic_write(StatePaths(config.state_dir).delivery, json.dumps(data).encode(), mode=0o644)


def deliver(config: AgentConfig, *, deadline_s: float, max_attempts: int = 4,
          unspooled: Sequence[Report] = ()) -> DeliveryResult | None:
    """Deliver what waits in the outbox, then the `unspooled` reports (ones no outbox could take) from
    memory; None when no collector is configured or nothing waits. Never raises for delivery trouble: the
    result's `error` (and `lost`) say it; the caller decides who hears."""
    box = outbox(config)
    if not config.collector.url:
        return None
    if not (box.pending() or unspooled):
        previous = last_state(config)
        if previous is None or previous.error:
            _record(config, None, 0)
        return None
    from agent.sender import DeliveryResult, Sender  # httpx: only when there is something to send

    started = time.monotonic()
    try:
        waiting = _enrol(config, box)
        if waiting is not None:  # no token yet: the reports wait in the outbox for the approval
            raise AgentError(waiting)
        with Sender.from_config(config.collector, max_attempts=max_attempts) as sender:
            result = sender.deliver_outbox(box, deadline_s=deadline_s)
            lost = [r.run_id for r in unspooled if not sender.deliver_body(
                to_json(r).encode("utf-8"), deadline_s=max(deadline_s - (time.monotonic() - started), 1.0))]
    except AgentError as e:  # token file missing or unsafe: say so, keep the reports
        result = DeliveryResult(remaining=len(box.pending()), error=str(e),
                             lost=tuple(r.run_id for r in unspooled))
    else:
        if unspooled:
            result = dataclasses.replace(result, delivered=result.delivered + len(unspooled) - len(lost),
                                         lost=tuple(lost))
    _record(config, result.error, result.remaining)
    log.debug("outbox flushed: delivered=%d duplicates=%d quarantined=%d remaining=%d lost=%d%s",
              result.delivered, result.duplicates, result.quarantined, result.remaining, len(result.lost),
              f" error={result.error!r}" if result.error else "")
    return result


def _enrol(config: AgentConfig, box: Outbox) -> str | None:
    """With collector.enrol and no token file yet: one round of enrolment (agent.enrolment), naming the
    groups of the newest waiting report; None once the token file exists, else why the reports wait."""
    token_file = config.collector.token_file
    if not config.collector.enrol or token_file is None or token_file.exists():
        return None
    from agent import enrolment

    status = enrolment.ensure_token(config, groups=newest_roles(box))
    return None if status.token_ready else status.message


def newest_roles(box: Outbox) -> tuple[str, ...]:
    """The roles (inventory groups) of the newest report waiting in the outbox, or () when none says."""
    for entry in reversed(box.pending()):
        with contextlib.suppress(OSError, ValueError):
            roles = json.loads(box.read(entry)).get("roles")
            if isinstance(roles, list) and all(isinstance(r, str) for r in roles):
                return tuple(roles)
    return ()


def destination(config: AgentConfig, run_id: str) -> str:
    """Where the report `run_id` is now, in words: 'delivered', 'queued in the outbox (N waiting: why)',
    'quarantined (refused by the collector)', or 'kept locally (no collector.url)'."""
    if not config.collector.url:
        return "kept locally (no collector.url)"
    box = outbox(config)
    pending = box.pending()
    if any(e.run_id == run_id for e in pending):
        state = last_state(config)
        why = f": {state.error}" if state is not None and state.error else ""
        return f"queued in the outbox ({len(pending)} waiting{why})"
    if any(q.entry.run_id == run_id for q in box.quarantined()):
        return "quarantined (refused by the collector)"
    return "delivered"

