"""Web UI sessions stored in the database; times from clocks ahead of the collector clamped.

- `sessions`: one row per sign-in (SHA-256 of the cookie, the reader token it was made with, expiry), so
  that logout and token revocation end a session in every collector process sharing the database.
- Rows written before the clock rule (docs/collector.md, "Times from the hosts' clocks") with a time
  after their receive time get the receive time, so that a host frozen by a report from the future (a
  2099 `finished_at`) takes its next report as current again.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CLAMP = [
    "UPDATE runs SET finished_at = received_at WHERE finished_at > received_at",
    "UPDATE runs SET started_at = finished_at WHERE started_at > finished_at",
    "UPDATE hosts SET last_finished_at = last_seen_at WHERE last_finished_at > last_seen_at",
    "UPDATE drift_items SET first_seen_at = (SELECT received_at FROM runs WHERE runs.run_id = "
    "drift_items.run_id) WHERE first_seen_at > (SELECT received_at FROM runs WHERE runs.run_id = "
    "drift_items.run_id)",
    "UPDATE commits SET committed_at = first_seen_at WHERE committed_at > first_seen_at",
]


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("session_hash", sa.String(64), primary_key=True),
        sa.Column("token_id", sa.Integer(), sa.ForeignKey("tokens.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_sessions_token", "sessions", ["token_id"])
    op.create_index("ix_sessions_expires", "sessions", ["expires_at"])
    for statement in CLAMP:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("sessions")
