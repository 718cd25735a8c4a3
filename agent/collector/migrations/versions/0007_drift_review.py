"""Drift review: drift items with a lifecycle, exceptions, the review audit log, daily compliance.

The tables of docs/drift-review.md; tables.py describes each. Follows 0006 (rollouts).

Revision ID: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

HOST = 255
SHA = 64


def upgrade() -> None:
    op.create_table(
        "drift_exceptions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("scope_fields", sa.Text(), nullable=False),
        sa.Column("host_pattern", sa.String(HOST), nullable=True),
        sa.Column("host_group", sa.String(255), nullable=True),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("ticket", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_by", sa.Text(), nullable=True),
    )
    op.create_index("ix_drift_exceptions_expires", "drift_exceptions", ["expires_at"])
    _review_items()
    op.create_table(
        "review_hosts",
        sa.Column("host", sa.String(HOST), sa.ForeignKey("hosts.host", ondelete="CASCADE"), primary_key=True),
        sa.Column("last_check_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "review_audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("actor_kind", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
    )
    op.create_index("ix_review_audit_at", "review_audit", ["at"])
    op.create_table(
        "drift_exception_alerts",
        sa.Column("exception_id", sa.Integer(), sa.ForeignKey("drift_exceptions.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("alert", sa.String(32), primary_key=True),
        sa.Column("sent_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "compliance_daily",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("scope_kind", sa.String(8), primary_key=True),
        sa.Column("scope", sa.String(255), primary_key=True),
        sa.Column("hosts", sa.Integer(), nullable=False),
        sa.Column("in_sync", sa.Integer(), nullable=False),
        sa.Column("in_sync_with_exceptions", sa.Integer(), nullable=False),
        sa.Column("unknown", sa.Integer(), nullable=False),
    )


def _review_items() -> None:
    op.create_table(
        "review_items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key_sha256", sa.String(SHA), nullable=False),
        sa.Column("host", sa.String(HOST), nullable=False),
        sa.Column("role", sa.String(255), nullable=False),
        sa.Column("play", sa.Text(), nullable=False),
        sa.Column("ansible_role", sa.String(255), nullable=False),
        sa.Column("task_file", sa.Text(), nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("item", sa.Text(), nullable=False),
        sa.Column("nth", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("kinds", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("checks", sa.Integer(), nullable=False),
        sa.Column("commits", sa.Text(), nullable=False),
        sa.Column("commit_count", sa.Integer(), nullable=False),
        sa.Column("module", sa.String(255), nullable=False),
        sa.Column("task_path", sa.Text(), nullable=False),
        sa.Column("diff_sha256", sa.String(SHA), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(), nullable=True),
        sa.Column("acknowledged_by", sa.Text(), nullable=True),
        sa.Column("accepted_by", sa.Integer(), sa.ForeignKey("drift_exceptions.id"), nullable=True),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.Column("resolution", sa.String(16), nullable=True),
    )
    op.create_index("ix_review_items_key", "review_items", ["key_sha256", "resolved_at"])
    op.create_index("ix_review_items_host_state", "review_items", ["host", "state"])
    op.create_index("ix_review_items_state_first", "review_items", ["state", "first_seen_at"])


def downgrade() -> None:
    for table in ("compliance_daily", "drift_exception_alerts", "review_audit", "review_hosts",
                  "review_items", "drift_exceptions"):
        op.drop_table(table)
