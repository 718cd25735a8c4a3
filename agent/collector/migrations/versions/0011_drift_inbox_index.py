"""The drift inbox's and compliance's indexes (docs/drift-review.md "Speed"): the pages group the current
items by task.

- `ix_review_items_task_current`: the current items (state != 'resolved', a partial index) in task order
  with every column the per-task aggregate reads, so it is one pass over the index, no table rows, no sort.
- `ix_review_items_role_task_current`: the current items of a role by task and host, for a role's
  compliance per task (the compliance role page, the daily snapshot) without reading table rows or sorting.
- `ix_review_items_state_accepted`: the accepted items with their exception, read from the index alone
  to find the few whose exception has lapsed (revoked, expired) by now.

Revision ID: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

CURRENT = sa.text("state != 'resolved'")
# tables.TASK_COVER as of this revision (a migration does not follow later edits of tables.py)
TASK_COVER = ["task", "play", "role", "ansible_role", "task_file", "host", "kind", "state", "accepted_by",
              "module", "first_seen_at", "last_seen_at"]


def upgrade() -> None:
    op.create_index("ix_review_items_state_accepted", "review_items", ["state", "accepted_by"])
    op.create_index("ix_review_items_task_current", "review_items", TASK_COVER,
                    sqlite_where=CURRENT, postgresql_where=CURRENT)
    op.create_index("ix_review_items_role_task_current", "review_items",
                    ["role", "task", "host", "state", "accepted_by"],
                    sqlite_where=CURRENT, postgresql_where=CURRENT)


def downgrade() -> None:
    op.drop_index("ix_review_items_role_task_current", "review_items")
    op.drop_index("ix_review_items_task_current", "review_items")
    op.drop_index("ix_review_items_state_accepted", "review_items")
