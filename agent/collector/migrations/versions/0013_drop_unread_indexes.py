"""Drop three indexes that no statement of the collector reads, and that every report writes to.

- `ix_review_items_key (key_sha256, resolved_at)`: made with the drift review's schema (0007) before
  ingest wrote it; nothing looks an item up by its key hash (review_store reads a host's current items
  by host and state). Its keys are hashes, so each new or resolved item lands on a page of its own.
- `ix_drift_items_task_run (task, run_id)` and `ix_drift_items_host (host)`: "which hosts drift on task
  X" and a host's drift are read from `review_items` since the drift review (queries.drift_items_now);
  `drift_items` is read by run only (`ix_drift_items_run`: the notifier's first drifted task of a run,
  prune's delete, the cascade from `runs`).

Measured (bench/README.md, "Eleventh pass"): after 60,000 reports of 200 hosts, one batch of 200 reports
changed 1,634 pages of the database, 526 of them in these three indexes; every page a batch changes is
written to the WAL, fsync'd, and copied back at a checkpoint.

Downgrade builds them again.

Revision ID: 0013
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_review_items_key", "review_items")
    op.drop_index("ix_drift_items_task_run", "drift_items")
    op.drop_index("ix_drift_items_host", "drift_items")


def downgrade() -> None:
    op.create_index("ix_drift_items_host", "drift_items", ["host"])
    op.create_index("ix_drift_items_task_run", "drift_items", ["task", "run_id"])
    op.create_index("ix_review_items_key", "review_items", ["key_sha256", "resolved_at"])
