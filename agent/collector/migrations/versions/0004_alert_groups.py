"""Alert groups: webhook_deliveries.group_key and members, so alerts of one group merge across scans.

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("group_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("members", sa.Text(), nullable=True))
    op.create_index("ix_webhook_deliveries_url_group", "webhook_deliveries",
                    ["url", "group_key", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_url_group", "webhook_deliveries")
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("members")
        batch.drop_column("group_key")
