"""Initial schema: hosts, host_roles, runs, drift_items, commits, tokens.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _dt(name: str, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(), nullable=nullable)


def upgrade() -> None:
    _hosts()
    _runs()
    op.create_table(
        "commits",
        sa.Column("sha", sa.String(64), primary_key=True),
        sa.Column("author", sa.Text(), nullable=True),
        _dt("committed_at", True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("signature_status", sa.String(16), nullable=False),
        sa.Column("signer", sa.Text(), nullable=True),
        _dt("first_seen_at", False),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        _dt("created_at", False),
        _dt("revoked_at", True),
    )
    op.create_index("ix_tokens_name", "tokens", ["name"])


def _hosts() -> None:
    op.create_table(
        "hosts",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("last_run_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("phase_reached", sa.String(16), nullable=False),
        sa.Column("commit", sa.String(64), nullable=True),
        sa.Column("ref", sa.String(255), nullable=True),
        sa.Column("drift_count", sa.Integer(), nullable=False),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        _dt("pause_until", True),
        sa.Column("agent_version", sa.String(64), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=True),
        sa.Column("splay_s", sa.Integer(), nullable=True),
        _dt("last_finished_at", False),
        _dt("last_seen_at", False),
        _dt("due_at", False),
        _dt("first_seen_at", False),
    )
    for column in ("status", "commit", "last_seen_at", "due_at"):
        op.create_index(f"ix_hosts_{column}", "hosts", [column])
    op.create_table(
        "host_roles",
        sa.Column("host", sa.String(255), sa.ForeignKey("hosts.host", ondelete="CASCADE"), primary_key=True),
        sa.Column("role", sa.String(255), primary_key=True),
    )
    op.create_index("ix_host_roles_role", "host_roles", ["role"])


def _runs() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("phase_reached", sa.String(16), nullable=False),
        sa.Column("commit", sa.String(64), nullable=True),
        sa.Column("ref", sa.String(255), nullable=True),
        sa.Column("previous_commit", sa.String(64), nullable=True),
        sa.Column("agent_version", sa.String(64), nullable=False),
        _dt("started_at", False),
        _dt("finished_at", False),
        _dt("received_at", False),
        sa.Column("drift_count", sa.Integer(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.Column("compacted", sa.Integer(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("report", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_runs_host_finished", "runs", ["host", "finished_at"])
    op.create_index("ix_runs_commit_host", "runs", ["commit", "host"])
    op.create_index("ix_runs_status_finished", "runs", ["status", "finished_at"])
    op.create_index("ix_runs_finished", "runs", ["finished_at"])
    op.create_table(
        "drift_items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("play", sa.Text(), nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("role", sa.String(255), nullable=True),
        sa.Column("module", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("diff_count", sa.Integer(), nullable=False),
        _dt("first_seen_at", True),
    )
    op.create_index("ix_drift_items_run", "drift_items", ["run_id"])
    op.create_index("ix_drift_items_task_run", "drift_items", ["task", "run_id"])
    op.create_index("ix_drift_items_host", "drift_items", ["host"])


def downgrade() -> None:
    for table in ("drift_items", "runs", "host_roles", "hosts", "commits", "tokens"):
        op.drop_table(table)
