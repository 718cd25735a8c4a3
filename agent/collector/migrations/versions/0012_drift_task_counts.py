"""The drift inbox's per-task counts, kept by triggers (docs/drift-review.md "Speed"). SQLite only.

The SQL below is built from this module's constant names only (no input): hence the noqa S608.

`drift_task_counts` holds one row per task identity (task, play, role, ansible_role, task_file) that has
current items (state != 'resolved'): `items`, `hosts` (distinct hosts), one count per drift kind
(corrective, intentional, recurring, unverifiable) and one per stored current state (open, acknowledged,
accepted). Triggers on `review_items` keep it exact in the writer's own transaction, whoever writes (the
batched ingest's executemany, the review actions, a raw UPDATE or DELETE): after an insert, a delete, and
an update that really changes state, kind, host or an identity column (compared with IS NOT: an UPDATE
may SET a column to the value it holds, and then the trigger does nothing). The rows a REPLACE deletes
fire the DELETE trigger only with PRAGMA recursive_triggers=ON: db.create sets it on every connection.
Each subtracts the old row's contribution if it was current and adds the new row's if it is (an
UPSERT). `hosts` is a distinct count: a host adds 1 only when no other current item (id != this one) of
the same identity has that host, and subtracts 1 only when none remains: a probe of the partial index
`ix_review_items_task_current` (0011), which starts with the identity and the host. A row whose `items`
reaches 0 is deleted, so the table has exactly the task identities with current items. The upgrade fills
it from the existing items.

**SQLite only** (on PostgreSQL this revision does nothing): SQLite has one writer at a time (db.write
takes BEGIN IMMEDIATE, plus the process's write lock), so the triggers cannot race or deadlock. On
PostgreSQL several collectors write at once: the counts rows would be hot rows every ingest of a task's
hosts updates, with deadlocks unless every writer touched them in one order; its live aggregate already
met the target (167 ms for /drift at load 2.5, bench/README.md), so it keeps it.

Revision ID: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TABLE = "drift_task_counts"
# as of this revision (a migration does not follow later edits of tables.py or agent/report.py)
IDENTITY = ("task", "play", "role", "ansible_role", "task_file")
KINDS = ("corrective", "intentional", "recurring", "unverifiable")
STATES = ("open", "acknowledged", "accepted")
COUNTS = ("items", "hosts", *KINDS, *STATES)
TRIGGERS = ("drift_task_counts_insert", "drift_task_counts_delete", "drift_task_counts_update")


def _same_identity(row: str, other: str = "r") -> str:
    return " AND ".join(f"{other}.{c} = {row}.{c}" for c in IDENTITY)


def _other_current(row: str, also: str | None = None) -> str:
    """True when another current item (not `row`) has `row`'s identity and host: an index probe.

    `also`: a second name of the same row to leave out. In the UPDATE trigger the row is already NEW when
    OLD's contribution is taken off, so an UPDATE that also changes the id must not find the row itself
    under NEW.id (it would keep a host the row took away)."""
    others = f"r.id != {row}.id" + (f" AND r.id != {also}.id" if also else "")
    return (f"EXISTS (SELECT 1 FROM review_items r WHERE {_same_identity(row)} AND r.host = {row}.host"  # noqa: S608
            f" AND r.state != 'resolved' AND {others})")


def _add(row: str) -> str:
    """Add `row`'s contribution (when it is current) to its task's counts row."""
    values = ["1", f"NOT {_other_current(row)}", *(f"{row}.kind = '{k}'" for k in KINDS),
              *(f"{row}.state = '{s}'" for s in STATES)]
    columns = ", ".join((*IDENTITY, *COUNTS))
    # SELECT ... WHERE (not VALUES) so that a non-current row adds nothing; the WHERE also settles the
    # parse of ON CONFLICT after a SELECT
    return (f"INSERT INTO {TABLE} ({columns}) SELECT {', '.join(f'{row}.{c}' for c in IDENTITY)}, "
            f"{', '.join(values)} WHERE {row}.state != 'resolved' "
            f"ON CONFLICT ({', '.join(IDENTITY)}) DO UPDATE SET "
            + ", ".join(f"{c} = {c} + excluded.{c}" for c in COUNTS) + ";")


def _subtract(row: str, also: str | None = None) -> str:
    """Take `row`'s contribution (when it was current) from its task's counts row; drop an empty row.
    `also`: the row's other name (NEW in the UPDATE trigger: `_other_current`)."""
    key = " AND ".join(f"{c} = {row}.{c}" for c in IDENTITY)
    sets = ["items = items - 1", f"hosts = hosts - (NOT {_other_current(row, also)})",
            *(f"{k} = {k} - ({row}.kind = '{k}')" for k in KINDS),
            *(f"{s} = {s} - ({row}.state = '{s}')" for s in STATES)]
    return (f"UPDATE {TABLE} SET {', '.join(sets)} WHERE {row}.state != 'resolved' AND {key};"  # noqa: S608
            f" DELETE FROM {TABLE} WHERE {key} AND items <= 0;")


def _changed() -> str:
    return " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in ("state", "kind", "host", *IDENTITY))


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL keeps the live aggregate (docstring)
    op.create_table(
        TABLE,
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("play", sa.Text, nullable=False),
        sa.Column("role", sa.String(255), nullable=False),
        sa.Column("ansible_role", sa.String(255), nullable=False),
        sa.Column("task_file", sa.Text, nullable=False),
        *(sa.Column(c, sa.Integer, nullable=False, server_default="0") for c in COUNTS),
        sa.UniqueConstraint(*IDENTITY, name="uq_drift_task_counts_task"),
    )
    op.execute(f"CREATE TRIGGER drift_task_counts_insert AFTER INSERT ON review_items "
               f"WHEN NEW.state != 'resolved' BEGIN {_add('NEW')} END")
    op.execute(f"CREATE TRIGGER drift_task_counts_delete AFTER DELETE ON review_items "
               f"WHEN OLD.state != 'resolved' BEGIN {_subtract('OLD')} END")
    op.execute(f"CREATE TRIGGER drift_task_counts_update AFTER UPDATE ON review_items "
               f"WHEN ({_changed()}) AND (OLD.state != 'resolved' OR NEW.state != 'resolved') "
               f"BEGIN {_subtract('OLD', 'NEW')} {_add('NEW')} END")
    # the backfill: hosts is count(DISTINCT host) of the current items, as the live aggregate counts it
    columns = ", ".join((*IDENTITY, *COUNTS))
    counts = ", ".join(("count(*)", "count(DISTINCT host)", *(f"sum(kind = '{k}')" for k in KINDS),
                        *(f"sum(state = '{s}')" for s in STATES)))
    op.execute(f"INSERT INTO {TABLE} ({columns}) SELECT {', '.join(IDENTITY)}, {counts} FROM review_items "  # noqa: S608
               f"WHERE state != 'resolved' GROUP BY {', '.join(IDENTITY)}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.drop_table(TABLE)
