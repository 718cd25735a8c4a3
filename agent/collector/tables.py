"""The collector's schema (SQLAlchemy Core). Migrations in `migrations/versions` create exactly this;
a test compares the two.

- hosts: one row per host with its current state (from its newest report), for the fleet overview.
- host_roles: (host, role) so that "hosts with role R" is an indexed query.
- runs: one row per report with the columns the queries filter on; the whole report is a zlib blob.
- drift_items: one row per drifted task of a run (read by run; "which hosts drift on task X" is a read of
  review_items, the drift review's).
- commits: what is known about a commit (author, subject, signature), for rollout pages.
- tokens: ingest tokens (bound to a host) and reader tokens; only a SHA-256 of each token is stored.
- sessions: web UI sign-ins (migration 0005); only a SHA-256 of each session cookie is stored.
- drift review (migration 0007; not written yet): review_items, drift_exceptions, review_hosts,
  review_audit, drift_exception_alerts, compliance_daily (docs/drift-review.md).
- source_heads: the commit beacon's heads, what `git ls-remote` answered for each watched (source, ref)
  (migration 0008; agent.collector.heads).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC on every database; read back as an aware UTC datetime."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite aggregate results (min/max) come back as text
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


metadata = MetaData()

HOST = 255
SHA = 64

hosts = Table(
    "hosts", metadata,
    Column("host", String(HOST), primary_key=True),
    Column("last_run_id", String(64), nullable=False, index=True),
    Column("status", String(16), nullable=False, index=True),
    Column("mode", String(16), nullable=False),
    Column("phase_reached", String(16), nullable=False),
    Column("commit", String(SHA), nullable=True, index=True),
    Column("ref", String(255), nullable=True),
    Column("drift_count", Integer, nullable=False),
    Column("failed_count", Integer, nullable=False),
    Column("error_count", Integer, nullable=False),
    Column("paused", Boolean, nullable=False),
    Column("pause_reason", Text, nullable=True),
    Column("pause_until", UTCDateTime, nullable=True),
    Column("agent_version", String(64), nullable=False),
    Column("interval_s", Integer, nullable=True),
    Column("splay_s", Integer, nullable=True),
    Column("last_finished_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False, index=True),
    Column("due_at", UTCDateTime, nullable=False, index=True),
    Column("first_seen_at", UTCDateTime, nullable=False),
    Index("ix_hosts_last_run_id", "last_run_id"),  # migration 0002: current drift joins on it
)

host_roles = Table(
    "host_roles", metadata,
    Column("host", String(HOST), ForeignKey("hosts.host", ondelete="CASCADE"), primary_key=True),
    Column("role", String(255), primary_key=True),
    Index("ix_host_roles_role", "role"),
)

runs = Table(
    "runs", metadata,
    Column("run_id", String(64), primary_key=True),
    Column("host", String(HOST), nullable=False),
    Column("status", String(16), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("phase_reached", String(16), nullable=False),
    Column("commit", String(SHA), nullable=True),
    Column("ref", String(255), nullable=True),
    Column("previous_commit", String(SHA), nullable=True),
    Column("agent_version", String(64), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("drift_count", Integer, nullable=False),
    Column("changed", Integer, nullable=False),
    Column("failed_count", Integer, nullable=False),
    Column("error_count", Integer, nullable=False),
    Column("compacted", Integer, nullable=False),
    Column("duration_s", Float, nullable=True),
    Column("report", LargeBinary, nullable=False),
    Index("ix_runs_host_finished", "host", "finished_at"),
    # migration 0014: a commit's runs in time order (the listings and the evidence export filter by
    # commit); a batch's entries go to the end of their commit's range, not one place per host
    Index("ix_runs_commit_finished", "commit", "finished_at"),
    Index("ix_runs_status_finished", "status", "finished_at"),
    Index("ix_runs_finished", "finished_at"),
)

drift_items = Table(
    "drift_items", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("host", String(HOST), nullable=False),
    Column("play", Text, nullable=False),
    Column("task", Text, nullable=False),
    Column("role", String(255), nullable=True),
    Column("module", String(255), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("diff_count", Integer, nullable=False),
    Column("first_seen_at", UTCDateTime, nullable=True),
    Index("ix_drift_items_run", "run_id"),  # read by run only (0013 dropped (task, run_id) and (host))
)

commits = Table(
    "commits", metadata,
    Column("sha", String(SHA), primary_key=True),
    Column("author", Text, nullable=True),
    Column("committed_at", UTCDateTime, nullable=True),
    Column("subject", Text, nullable=True),
    Column("signature_status", String(16), nullable=False),
    Column("signer", Text, nullable=True),
    Column("first_seen_at", UTCDateTime, nullable=False),
)

# migration 0014: each (commit, host) that some run reported, kept when prune deletes the runs. "Which
# hosts ever ran commit X" (the rollout's summary, the evidence export's scope) reads it; ingest adds a row
# only the first time a host reports a commit, so a report in steady state writes no page of it.
host_commits = Table(
    "host_commits", metadata,
    Column("commit", String(SHA), primary_key=True),
    Column("host", String(HOST), primary_key=True),
)

tokens = Table(
    "tokens", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),
    Column("name", String(HOST), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
)

# Notifications (migration 0003): the alert state last notified for each host, and webhook deliveries.
alert_states = Table(
    "alert_states", metadata,
    Column("host", String(HOST), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("since", UTCDateTime, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("url", String(1000), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("alert_kind", String(16), nullable=False),
    Column("summary", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),  # pending | sending (claimed) | delivered | failed
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=True),
    Column("delivered_at", UTCDateTime, nullable=True),
    Index("ux_webhook_deliveries_url_fingerprint", "url", "fingerprint", unique=True),
    Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_created", "created_at"),
    # migration 0004: the alert group (kind, task, commit) a delivery belongs to and its (host, since)
    # members as JSON, so later changes of the group merge into a delivery not sent yet
    Column("group_key", String(64), nullable=True),
    Column("members", Text, nullable=True),
    Index("ix_webhook_deliveries_url_group", "url", "group_key", "created_at"),
)

# Web UI sessions (migration 0005): one row per sign-in, ended by logout, by expiry, or by revoking the
# reader token it was made with (a session counts only while its token is unrevoked).
sessions = Table(
    "sessions", metadata,
    Column("session_hash", String(64), primary_key=True),
    Column("token_id", Integer, ForeignKey("tokens.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_sessions_token", "token_id"),
    Index("ix_sessions_expires", "expires_at"),
)

# Rollouts (migration 0006, docs/rollout.md). The policy a commit rolls out under, as the hosts reported
# it; the first time each wave met the criteria of the wave after it (never moved back); every halt,
# resume and skip (an audit log: who, when, why); approved plans, one row per (commit, plan digest).
ROLLOUT_DIGEST, WAVE_NAME = 64, 63
rollout_policies = Table(
    "rollout_policies", metadata,
    Column("commit", String(SHA), primary_key=True),
    Column("policy_digest", String(ROLLOUT_DIGEST), primary_key=True),
    Column("policy_json", Text, nullable=False),
    Column("first_seen_at", UTCDateTime, nullable=False),
)
rollout_waves = Table(
    "rollout_waves", metadata,
    Column("commit", String(SHA), primary_key=True),
    Column("policy_digest", String(ROLLOUT_DIGEST), primary_key=True),
    Column("wave", String(WAVE_NAME), primary_key=True),
    Column("criteria_met_at", UTCDateTime, nullable=False),
)
rollout_actions = Table(
    "rollout_actions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("commit", String(SHA), nullable=False),
    Column("action", String(16), nullable=False),  # halt | resume | skip
    Column("wave", String(WAVE_NAME), nullable=True),
    Column("actor", Text, nullable=False),  # the identity, or "collector" for an automatic halt
    Column("at", UTCDateTime, nullable=False),
    Column("reason", Text, nullable=False),
    Index("ix_rollout_actions_commit_at", "commit", "at"),
)
rollout_approvals = Table(
    "rollout_approvals", metadata,
    Column("commit", String(SHA), primary_key=True),
    Column("plan_digest", String(ROLLOUT_DIGEST), primary_key=True),
    Column("actor", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("reason", Text, nullable=False),
)
rollout_hosts = Table(  # each host's latest outcome on (commit, policy digest), from its latest report
    "rollout_hosts", metadata,
    Column("commit", String(SHA), primary_key=True),
    Column("policy_digest", String(ROLLOUT_DIGEST), primary_key=True),
    Column("host", String(255), primary_key=True),
    Column("wave", String(WAVE_NAME), nullable=False),
    Column("outcome", String(16), nullable=False),  # converged | failed | pending (rollout_state.Outcome)
    Column("gate", String(16), nullable=False),  # the host's gate state (agent.report.GateState)
    Column("reason", Text, nullable=False),
    Column("plan_digest", String(ROLLOUT_DIGEST), nullable=True),
    Column("run_id", String(64), nullable=False),
    Column("wave_sizes", Text, nullable=False),  # JSON {wave: size}, as this host computed them
    Column("at", UTCDateTime, nullable=False),  # the report's finish time
)

# Drift review (migration 0007, docs/drift-review.md). Not written by ingest yet: the pure core is in
# drift_review.py, drift_exceptions.py and compliance.py.
# - drift_exceptions: accepted drift until a date; the scope's fields (key, task, item, role, role_kind) as
#   JSON in `scope_fields`, the host selector in host_pattern / host_group.
# - review_items: one row per episode of a drift item; `key_sha256` hashes the item key (the key's parts
#   are long texts; not indexed since 0013, nothing looks an item up by it); `state` is the derived state,
#   stored for the inbox's filters.
# - review_hosts: per host, when its newest complete check started (late reports never resolve items).
# - review_audit: every review action (append-only); drift_exception_alerts: alerts already sent.
# - compliance_daily: one row per UTC day and fleet/role/task scope (compliance_store.snapshot).
drift_exceptions = Table(
    "drift_exceptions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("scope", String(8), nullable=False),
    Column("scope_fields", Text, nullable=False),
    Column("host_pattern", String(HOST), nullable=True),
    Column("host_group", String(255), nullable=True),
    Column("owner", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("ticket", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("revoked_by", Text, nullable=True),
    Index("ix_drift_exceptions_expires", "expires_at"),
)

# The drift inbox's per-task aggregate (queries.drift_by_task) reads these columns of the current items.
TASK_COVER = ("task", "play", "role", "ansible_role", "task_file", "host", "kind", "state", "accepted_by",
              "module", "first_seen_at", "last_seen_at")

review_items = Table(
    "review_items", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key_sha256", String(SHA), nullable=False),
    Column("host", String(HOST), nullable=False),
    Column("role", String(255), nullable=False),
    Column("play", Text, nullable=False),
    Column("ansible_role", String(255), nullable=False),
    Column("task_file", Text, nullable=False),
    Column("task", Text, nullable=False),
    Column("item", Text, nullable=False),
    Column("nth", Integer, nullable=False, server_default="0"),  # twins: ItemKey.nth
    Column("state", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("kinds", Text, nullable=False),
    Column("first_seen_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("checks", Integer, nullable=False),
    Column("commits", Text, nullable=False),
    Column("commit_count", Integer, nullable=False),
    Column("module", String(255), nullable=False),
    Column("task_path", Text, nullable=False),
    Column("diff_sha256", String(SHA), nullable=True),
    Column("acknowledged_at", UTCDateTime, nullable=True),
    Column("acknowledged_by", Text, nullable=True),
    Column("accepted_by", Integer, ForeignKey("drift_exceptions.id"), nullable=True),
    Column("resolved_at", UTCDateTime, nullable=True),
    Column("resolution", String(16), nullable=True),
    Index("ix_review_items_host_state", "host", "state"),
    Index("ix_review_items_state_first", "state", "first_seen_at"),
    Index("ix_review_items_role_host", "role", "host", "state", "accepted_by"),  # 0009: compliance
    # 0011: the drift inbox. Accepted items by exception (whose exception lapsed), and the per-task
    # aggregate read from the index alone, current items only (a partial index: resolved ones, the bulk of
    # an old table, are not in it).
    Index("ix_review_items_state_accepted", "state", "accepted_by"),
    Index("ix_review_items_task_current", *TASK_COVER,
          sqlite_where=text("state != 'resolved'"), postgresql_where=text("state != 'resolved'")),
    # 0011: a role's compliance per task (compliance_store: current items by (role, task, host)), in order
    Index("ix_review_items_role_task_current", "role", "task", "host", "state", "accepted_by",
          sqlite_where=text("state != 'resolved'"), postgresql_where=text("state != 'resolved'")),
)

# 0012, SQLite only: the drift inbox's per-task counts of the current items, kept by triggers on
# review_items (the migration's docstring, docs/drift-review.md "Speed"). Not in `metadata`: PostgreSQL has
# no such table (it keeps the live aggregate), and `metadata` is what every engine's schema must match.
sqlite_metadata = MetaData()
drift_task_counts = Table(
    "drift_task_counts", sqlite_metadata,
    Column("task", Text, nullable=False),
    Column("play", Text, nullable=False),
    Column("role", String(255), nullable=False),
    Column("ansible_role", String(255), nullable=False),
    Column("task_file", Text, nullable=False),
    *(Column(name, Integer, nullable=False, server_default="0")
      for name in ("items", "hosts", "corrective", "intentional", "recurring", "unverifiable",
                   "open", "acknowledged", "accepted")),
    UniqueConstraint("task", "play", "role", "ansible_role", "task_file", name="uq_drift_task_counts_task"),
)

review_hosts = Table(
    "review_hosts", metadata,
    Column("host", String(HOST), ForeignKey("hosts.host", ondelete="CASCADE"), primary_key=True),
    Column("last_check_at", UTCDateTime, nullable=False),
)

review_audit = Table(
    "review_audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", Text, nullable=False),
    Column("actor_kind", String(16), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", Text, nullable=False),
    Column("reason", Text, nullable=True),
    Column("details", Text, nullable=False),
    Index("ix_review_audit_at", "at"),
)

drift_exception_alerts = Table(
    "drift_exception_alerts", metadata,
    Column("exception_id", Integer, ForeignKey("drift_exceptions.id", ondelete="CASCADE"), primary_key=True),
    Column("alert", String(32), primary_key=True),
    Column("sent_at", UTCDateTime, nullable=False),
)

compliance_daily = Table(
    "compliance_daily", metadata,
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD, UTC
    Column("scope_kind", String(8), primary_key=True),
    Column("scope", String(255), primary_key=True),
    Column("hosts", Integer, nullable=False),
    Column("in_sync", Integer, nullable=False),
    Column("in_sync_with_exceptions", Integer, nullable=False),
    Column("unknown", Integer, nullable=False),
    Index("ix_compliance_daily_scope", "scope_kind", "scope", "day"),  # migration 0009
)

# How far the notifier announced new corrective drift: the last review_items.id looked at (migration 0009).
review_cursors = Table(
    "review_cursors", metadata,
    Column("name", String(32), primary_key=True),
    Column("last_id", Integer, nullable=False),
)

source_heads = Table(
    "source_heads", metadata,
    Column("source_key", String(512), primary_key=True),  # heads.source_key(url): host/path, no .git
    Column("ref", String(255), primary_key=True),  # full ref name, as ls-remote prints it
    Column("commit", String(SHA), nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),  # when this collector first saw the commit there
    Column("via", String(16), nullable=False),  # poll | github | gitlab | gitea | generic
    Column("source_url", Text, nullable=False),  # the configured URL, credentials redacted
)

# Self-enrolment (migration 0010; agent.collector.enrolment): a host's request for its own ingest token.
enrolments = Table(
    "enrolments", metadata,
    Column("id", String(32), primary_key=True),  # random, not secret: the pickup secret guards the token
    Column("host", String(HOST), nullable=False, index=True),
    Column("groups", Text, nullable=False),  # JSON list: the inventory groups the host says it is in
    Column("pickup_hash", String(64), nullable=False),  # SHA-256 (hex) of the secret only the host knows
    Column("state", String(16), nullable=False, index=True),  # pending | approved | denied | collected
    Column("auth", String(16), nullable=False),  # secret | certificate
    Column("auth_name", String(HOST), nullable=False),  # the enrolment secret's name, or the certified name
    Column("address", String(64), nullable=False),  # the request's peer address
    Column("requested_at", UTCDateTime, nullable=False),
    Column("decided_at", UTCDateTime, nullable=True),
    Column("decided_by", String(HOST), nullable=True),  # operator name, cli:USER, or autosign:PATTERN
    Column("reason", Text, nullable=True),
    Column("token_id", Integer, nullable=True),  # the ingest token the host collected
    Column("collected_at", UTCDateTime, nullable=True),
)
