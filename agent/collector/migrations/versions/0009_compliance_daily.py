"""Compliance's daily series and the drift review's notification cursor (docs/drift-review.md section 5).

`compliance_daily` (made in 0007) gets an index by scope, so a scope's series (a chart: one scope, 90
days) is one index range however many scopes a day holds; `review_items` gets a covering index for the
live figures (compliance_store: current items grouped by role and host, read from the index alone).
`review_cursors` keeps how far the notifier
has announced new corrective drift (the id of the last `review_items` row looked at), so a restart
neither repeats nor floods.

Revision ID: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_compliance_daily_scope", "compliance_daily", ["scope_kind", "scope", "day"])
    op.create_index("ix_review_items_role_host", "review_items", ["role", "host", "state", "accepted_by"])
    op.create_table(
        "review_cursors",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("last_id", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("review_cursors")
    op.drop_index("ix_review_items_role_host", "review_items")
    op.drop_index("ix_compliance_daily_scope", "compliance_daily")
