"""`host_commits` (each commit a host ever reported) in place of `ix_runs_commit_host`; runs indexed by
(commit, finished_at).

`ix_runs_commit_host (commit, host)` answered "has host X run commit Y" (the rollout's summary, the
evidence export's scope). A run's entry goes to its host's place in its commit's range, so a batch of
reports from 200 hosts changed about 200 of its leaf pages: 296 of the 1,114 pages a batch of 200
changed after 60,000 reports (bench/README.md, "Eleventh pass"). Every page a batch changes is written
to the WAL, fsync'd, and copied back at a checkpoint.

- `host_commits (commit, host)` gets a row the first time a host reports a commit (insert, do nothing on
  conflict). In steady state a report reads its page and writes none. Prune deletes runs, not these rows.
  The upgrade fills it from the runs stored.
- `ix_runs_commit_finished (commit, finished_at)` serves what still reads runs by commit: the runs
  listing filtered by commit and the evidence export's commits in a time window. A batch's entries go
  to the end of their commit's range.

Downgrade builds `ix_runs_commit_host` again and drops the rest.

Revision ID: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "host_commits",
        sa.Column("commit", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), primary_key=True),
    )
    columns = (sa.column("commit", sa.String(64)), sa.column("host", sa.String(255)))
    runs = sa.table("runs", *columns)
    host_commits = sa.table("host_commits", *(sa.column(c.name, c.type) for c in columns))
    # as ingest (store._upsert_commit): an empty commit is no commit, and gets no pair
    stored = sa.and_(runs.c.commit.is_not(None), runs.c.commit != "")
    pairs = sa.select(runs.c.commit, runs.c.host).where(stored).distinct()
    op.execute(host_commits.insert().from_select(["commit", "host"], pairs))
    op.create_index("ix_runs_commit_finished", "runs", ["commit", "finished_at"])
    op.drop_index("ix_runs_commit_host", "runs")


def downgrade() -> None:
    op.create_index("ix_runs_commit_host", "runs", ["commit", "host"])
    op.drop_index("ix_runs_commit_finished", "runs")
    op.drop_table("host_commits")
