"""Index hosts.last_run_id: "current drift" joins each host's latest run to its drift items.

Revision ID: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_hosts_last_run_id", "hosts", ["last_run_id"])


def downgrade() -> None:
    op.drop_index("ix_hosts_last_run_id", table_name="hosts")
