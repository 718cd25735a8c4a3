"""Writes that could put the per-task counts of migration 0012 out of step with the live aggregate.

Each test writes to `review_items` in a way the ordinary writers do not (yet) but SQL allows: one UPDATE
over many rows, odd identity values, a changed id, INSERT OR REPLACE / UPDATE OR REPLACE (whose implicit
deletes fire DELETE triggers only with `recursive_triggers`), then checks the kept counts and
drift_by_task against the live definition (test_drift_inbox_queries.check_counts).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from alembic import command
from sqlalchemy import Engine, text

from agent.collector import db
from tests.collector.test_drift_inbox_queries import _base_row, check_counts, lite  # noqa: F401

_COLUMNS = ("id", "key_sha256", "host", "role", "play", "ansible_role", "task_file", "task", "item", "nth",
            "state", "kind", "kinds", "first_seen_at", "last_seen_at", "checks", "commits", "commit_count",
            "module", "task_path")


def _insert(engine: Engine, n: int, *, host: str = "h1", task: str = "t1", state: str = "open",
            kind: str = "corrective", role: str = "web", verb: str = "INSERT") -> None:
    row: dict[str, Any] = {**_base_row(n), "id": n, "host": host, "task": task, "role": role, "play": "p",
                           "ansible_role": "a", "task_file": "f", "state": state, "kind": kind}
    with db.write(engine) as conn:
        conn.exec_driver_sql(
            f"{verb} INTO review_items ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
            tuple(str(row[c]) if c.endswith("_at") else row[c] for c in _COLUMNS))


def _sql(engine: Engine, statement: str, **params: Any) -> None:
    with db.write(engine) as conn:
        conn.execute(text(statement), params)


def test_one_update_over_many_rows_of_one_task_and_host(lite):  # noqa: F811
    for n, host in enumerate(("h1", "h1", "h1", "h2", "h2"), start=1):
        _insert(lite, n, host=host)
    _insert(lite, 6, host="h1", task="t2")
    check_counts(lite)
    _sql(lite, "UPDATE review_items SET state = 'acknowledged' WHERE host = 'h1'")  # both tasks
    check_counts(lite)
    _sql(lite, "UPDATE review_items SET task = 't2' WHERE task = 't1' AND id <= 4")  # moves between tasks
    check_counts(lite)
    _sql(lite, "UPDATE review_items SET host = CASE host WHEN 'h1' THEN 'h2' ELSE 'h1' END")  # swaps hosts
    check_counts(lite)
    _sql(lite, "UPDATE review_items SET state = 'resolved' WHERE host = 'h2'")  # one host's items at once
    check_counts(lite)
    _sql(lite, "UPDATE review_items SET state = 'open'")  # all back
    check_counts(lite)
    _sql(lite, "DELETE FROM review_items WHERE task = 't2'")
    check_counts(lite)
    _sql(lite, "DELETE FROM review_items")  # no WHERE: SQLite's truncate shortcut must not skip triggers
    assert check_counts(lite) == []


def test_odd_identity_values_count_apart_as_sqlite_compares_them(lite):  # noqa: F811
    cafe = "caf\u00e9"
    tasks = ["", " ", "t", "t ", "T", cafe, unicodedata.normalize("NFD", cafe), "x" * 20_000, "\u2603\U0001f600",
             "a'b", "a\nb", "NULL"]
    for n, task in enumerate(tasks, start=1):
        _insert(lite, n, task=task, host=f"h{n % 2}")
        _insert(lite, 100 + n, task=task, host="h9", role=task or "r")
    kept = check_counts(lite)
    assert len(kept) == 2 * len(tasks)
    _sql(lite, "UPDATE review_items SET task = upper(task), role = role || ' '")
    check_counts(lite)
    _sql(lite, "UPDATE review_items SET state = 'resolved' WHERE length(task) > 1")
    check_counts(lite)


def test_a_changed_id_moves_no_count(lite):  # noqa: F811
    _insert(lite, 1)
    _insert(lite, 2, host="h2")
    check_counts(lite)
    _sql(lite, "UPDATE review_items SET id = id + 1000, state = 'acknowledged' WHERE id = 1")
    check_counts(lite)
    _sql(lite, "UPDATE review_items SET id = id + 10, kind = 'recurring'")
    check_counts(lite)


def test_replace_deletes_the_old_rows_contribution(lite):  # noqa: F811
    _insert(lite, 1)
    _insert(lite, 2, host="h2", task="t2")
    check_counts(lite)
    _insert(lite, 1, task="t3", verb="INSERT OR REPLACE")  # conflict on id 1: deletes the old row
    check_counts(lite)
    _insert(lite, 2, task="t3", state="resolved", verb="REPLACE")
    check_counts(lite)
    _insert(lite, 3, host="h3")
    _sql(lite, "UPDATE OR REPLACE review_items SET id = 1 WHERE id = 3")  # deletes row 1 on the conflict
    check_counts(lite)
    _insert(lite, 3, kind="recurring", verb="INSERT")
    _sql(lite, "INSERT INTO review_items (" + ", ".join(_COLUMNS) + ") SELECT " + ", ".join(
        "'acknowledged'" if c == "state" else c for c in _COLUMNS) + " FROM review_items WHERE id = 3 "
        "ON CONFLICT (id) DO UPDATE SET state = excluded.state, host = 'h7'")  # an UPSERT: UPDATE triggers
    check_counts(lite)


def test_down_and_up_again_recounts_the_items_written_in_between(lite):  # noqa: F811
    """The triggers exist at the head (a later migration that rebuilt review_items, as alembic's batch mode
    does on SQLite, would drop them silently); items written while at 0011 are counted by the upgrade."""
    def triggers() -> list[str]:
        with lite.connect() as conn:
            return sorted(conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'review_items'").scalars())

    assert triggers() == ["drift_task_counts_delete", "drift_task_counts_insert", "drift_task_counts_update"]
    _insert(lite, 1)
    _insert(lite, 2, host="h2", state="accepted")
    config = db._alembic_config()
    with db.write(lite) as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0011")
    assert triggers() == []
    _insert(lite, 3, host="h3", kind="recurring")
    _sql(lite, "UPDATE review_items SET state = 'resolved' WHERE id = 1")
    assert db.migrate(lite) == db.head_revision()
    assert triggers() == ["drift_task_counts_delete", "drift_task_counts_insert", "drift_task_counts_update"]
    assert [row[5:7] for row in check_counts(lite)] == [(2, 2)]
