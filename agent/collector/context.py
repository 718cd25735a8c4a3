"""What every part of the collector shares: its settings, the clock, and the `Collector` that request
handlers and the notifier reach through `app.state.collector`.

This module sits below the parts that use it (api, ui, notify, notify_views, ui_auth) and never imports
them or app.py, which only wires them together (an import-linter contract keeps it so).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Engine

from agent.collector.alerts import Grouping, Webhook
from agent.collector.auth import ProxyAuth
from agent.collector.enrolment import EnrolPolicy
from agent.collector.group_commit import GroupCommit
from agent.collector.heads import Beacon, HeadsSettings
from agent.collector.leader import Leader
from agent.collector.metrics import Metrics
from agent.collector.payload import PayloadLimits
from agent.collector.queries import stale_cutoff
from agent.collector.store import Expectations
from agent.collector.writer_process import IN_FLIGHT, WriterProcess, database_url

if TYPE_CHECKING:
    from agent.collector.evidence import SigningKey

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CollectorSettings:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    stale_grace_s: float = 600.0
    expect: Expectations = field(default_factory=Expectations)
    proxy: ProxyAuth | None = None
    public_metrics: bool = False
    db_threads: int = 8
    webhooks: tuple[Webhook, ...] = ()
    notify_interval_s: float = 15.0
    payload: PayloadLimits = field(default_factory=PayloadLimits)
    client_cert_required: bool = False
    alert_grouping: Grouping = field(default_factory=Grouping)
    public_urls: tuple[str, ...] = ()  # where browsers reach the collector (a proxy's https://NAME)
    reviewers: tuple[str, ...] = ()  # trusted-proxy users who may act on drift (docs/drift-review.md)
    group_commit: bool = True  # store reports through GroupCommit (serve --no-group-commit: off)
    writer_process: bool = False  # GroupCommit's batches stored by a child process (serve --writer-process)
    heads: HeadsSettings | None = None  # the commit beacon (serve --heads-source, --hook-secret-file)
    operators: tuple[str, ...] = ()  # reader names allowed to halt, resume, skip and approve rollouts
    rollout_cache_s: float = 2.0  # how long an agents' rollout answer is served from memory (rollout_api)
    enrol: EnrolPolicy = field(default_factory=EnrolPolicy)  # self-enrolment: autosign and caps
    prune_older_than_s: float | None = None  # the leader prunes older runs hourly (serve --prune-older-than)
    compliance_snapshot_s: float | None = None  # rewrite today's compliance_daily rows this often (serve)
    evidence_key: SigningKey | None = None  # signs evidence bundles (serve --evidence-key; evidence.py)


@dataclass
class Collector:
    """What every request handler needs; stored on `app.state.collector`."""

    engine: Engine
    settings: CollectorSettings
    metrics: Metrics = field(default_factory=Metrics)
    now: Callable[[], datetime] = utc_now
    db_limiter: anyio.CapacityLimiter | None = None
    group: GroupCommit | None = None
    beacon: Beacon | None = None
    leader: Leader = field(init=False)  # one per process: the notifier, heads poll and prune run under it

    def __post_init__(self) -> None:
        # Database calls run in worker threads; a few threads serve more requests per second than many
        # (fewer threads fighting over the GIL and the database), while waiting requests cost nothing.
        if self.db_limiter is None:
            self.db_limiter = anyio.CapacityLimiter(self.settings.db_threads)
        if self.settings.group_commit and self.group is None:
            self.group = GroupCommit(self.engine, self.settings.expect, self.db_limiter)
            if self.settings.writer_process:
                self.group.writer_process = WriterProcess(database_url(self.engine), self.settings.expect)
                self.group.max_in_flight = IN_FLIGHT
        self.leader = Leader(self.engine)
        if self.settings.heads is not None and self.beacon is None:
            self.beacon = Beacon(self.engine, self.settings.heads)
        if self.beacon is not None:
            self.beacon.leader = self.leader  # one lead per process for all leader-only work

    def stale_before(self) -> datetime:
        """Hosts whose due time is before this moment are stale (now less the grace, queries.stale_cutoff)."""
        return stale_cutoff(self.now(), self.settings.stale_grace_s)

    async def db(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking database call in the worker thread pool."""
        call = functools.partial(func, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, limiter=self.db_limiter)
