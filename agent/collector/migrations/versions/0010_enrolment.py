"""Self-enrolment (docs/scale.md "Enrolment", docs/collector.md "Enrolment"): the requests of hosts that
ask for their own ingest token, with who decided them, when and why. The site enrolment secrets are
tokens of kind "enrol" in the existing tokens table (only their hashes are stored).

Revision ID: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrolments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False, index=True),
        sa.Column("groups", sa.Text(), nullable=False),
        sa.Column("pickup_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("auth", sa.String(16), nullable=False),
        sa.Column("auth_name", sa.String(255), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("decided_by", sa.String(255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("token_id", sa.Integer(), nullable=True),
        sa.Column("collected_at", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("enrolments")
