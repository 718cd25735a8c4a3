"""The commit beacon's heads (docs/scale.md, "The commit beacon"): what `git ls-remote` answered for each
watched (source, ref), so every collector process serves the same heads and a restart forgets nothing.

Revision ID: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "source_heads",
        sa.Column("source_key", sa.String(512), primary_key=True),
        sa.Column("ref", sa.String(255), primary_key=True),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("source_url", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("source_heads")
