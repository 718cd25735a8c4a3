"""Writes that could put the per-task counts of migration 0012 out of step with the live aggregate.

Each test writes to `review_items` in a way the ordinary writers do not (yet) but SQL allows: one UPDATE
over many rows, odd identity values, a changed id, INSERT OR REPLACE / UPDATE OR REPLACE (whose implicit
deletes fire DELETE triggers only with `recursive_triggers`), then checks the kept counts and
drift_by_task against the live definition (test_drift_inbox_queries.check_counts).
"""

from __future__ import annotations

import random
import threading
import unicodedata
from datetime import timedelta
from typing import Any

from alembic import command
from sqlalchemy import Engine, delete, func, select, text, update

from agent.collector import db, queries
from agent.collector.tables import drift_task_counts, review_items
from agent.report import Status
from tests.collector.test_drift_inbox import at, drift, exception_body, items, reviewer  # noqa: F401
from tests.collector.test_drift_inbox_queries import _base_row, check_counts, lite, live_counts  # noqa: F401
from tests.factory import BASE_TIME, make_report

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
    raw = lite.raw_connection()  # VACUUM rebuilds the file (outside a transaction): rowids of review_items stay
    try:
        raw.driver_connection.execute("VACUUM")
    finally:
        raw.close()
    _sql(lite, "UPDATE review_items SET kind = 'recurring' WHERE id % 2 = 0")
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


QUERIES = ("", "role=web", "task=nginx%20config", "role=web&task=users", "role=nomatch", "task=nomatch",
           "role=", "task=&role=", "limit=1", "limit=1&offset=1", "limit=2&offset=5", "role=web&limit=1&offset=1")


def test_the_page_and_the_api_show_what_the_live_aggregate_gives(client, send, reviewer, reader, clock, engine,  # noqa: F811
                                                                 monkeypatch):
    """Both engines: /api/v1/drift and /drift, with lapsed exceptions (expired, revoked), filters that match
    nothing or are empty, and pages, give the same JSON and HTML as with drift_by_task swapped for the live
    aggregate; and the same figures on SQLite (counts) as on PostgreSQL (live)."""
    clock.now = at(5)
    for host, roles in (("web-1", ("web",)), ("web-2", ("web",)), ("db-1", ("db",))):
        send(make_report(host, status=Status.DRIFTED, finished_at=at(0), roles=roles,
                         drift=(drift("nginx config"), drift("users", item="alice"), drift("users", item="bob"))))
    by = {(i["host"], i["task"], i["item"]): i["id"] for i in items(client, reader)}
    for body in (exception_body(by[("web-1", "nginx config", "")], scope="task", host_pattern="web-*"),
                 exception_body(by[("db-1", "users", "alice")], expires_at="2026-11-25T00:00:00Z"),
                 exception_body(None, scope="role", role="nginx", expires_at="2026-12-01")):
        assert client.post("/api/v1/drift/exceptions", headers=reviewer, json=body).status_code == 201
    role_exc = client.get("/api/v1/drift/exceptions", headers=reader).json()["items"]
    revoked = next(e["id"] for e in role_exc if e["scope"] == "role")
    assert client.post(f"/api/v1/drift/exceptions/{revoked}/revoke", headers=reviewer,
                       json={"reason": "too broad"}).status_code == 200
    clock.now = BASE_TIME + timedelta(days=5, hours=1)  # past the item exception's expiry: lapsed, not written

    def shown() -> dict[str, Any]:
        got = {}
        for q in QUERIES:
            api = client.get(f"/api/v1/drift?group=task&{q}", headers=reader)
            page = client.get(f"/drift?{q}", headers=reader)
            assert api.status_code == page.status_code == 200, (q, api.text)
            got[q] = (api.json(), page.text)
        return got

    counted = shown()
    monkeypatch.setattr(queries, "drift_by_task", queries._live_by_task)
    assert shown() == counted
    figures = {t["task"]: (t["hosts"], t["items"], t["states"]) for t in counted[""][0]["items"]}
    assert figures == {"nginx config": (3, 3, {"open": 1, "acknowledged": 0, "accepted": 2}),
                       "users": (3, 6, {"open": 6, "acknowledged": 0, "accepted": 0})}
    assert counted["role=nomatch"][0]["items"] == [] and counted["role=nomatch"][0]["total"] == 0
    assert counted["role="][0] == counted["task=&role="][0] == counted[""][0]  # empty: not filtered
    assert counted["limit=1&offset=1"][0]["total"] == 2
    assert [t["task"] for t in counted["limit=1&offset=1"][0]["items"]] == ["users"]


def test_two_writers_with_their_own_engines_keep_the_counts(lite):  # noqa: F811
    """Two engines on one file (each its own write lock, as two processes): their writes interleave
    statement by statement under BEGIN IMMEDIATE, the triggers inside each writer's transaction."""
    other = db.create(str(lite.url))
    ri = review_items.c

    errors: list[BaseException] = []

    def writer(engine: Engine, seed: int) -> None:
        try:
            write(engine, seed)
        except BaseException as error:  # handed to the test
            errors.append(error)

    def write(engine: Engine, seed: int) -> None:
        rng = random.Random(seed)
        for n in range(seed, seed + 60):
            with db.write(engine) as conn:
                ids = list(conn.execute(select(ri.id)).scalars())
                action = rng.choice(["insert", "insert", "update", "update", "delete"]) if ids else "insert"
                if action == "insert":
                    conn.execute(review_items.insert().values(
                        **_base_row(n), host=rng.choice(["h1", "h2"]), task=rng.choice(["t1", "t2"]), role="web",
                        play="p", ansible_role="a", task_file="f", kind="corrective",
                        state=rng.choice(["open", "accepted", "resolved"])))
                elif action == "update":
                    conn.execute(update(review_items).where(ri.host == rng.choice(["h1", "h2"])).values(
                        state=rng.choice(["open", "acknowledged", "resolved"]), task=rng.choice(["t1", "t2"])))
                else:
                    conn.execute(delete(review_items).where(ri.id == rng.choice(ids)))

    try:
        threads = [threading.Thread(target=writer, args=args) for args in ((lite, 1000), (other, 2000))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads) and errors == []
        with lite.connect() as conn:
            assert conn.execute(select(func.count()).select_from(review_items)).scalar_one() > 0
        check_counts(lite)
    finally:
        other.dispose()


def test_counts_follow_random_statements_over_many_rows(lite):  # noqa: F811
    """Property-style, as test_counts_follow_random_writes but each statement over a random set of rows:
    UPDATEs by host/task/state (several rows of one task and host at once), id shifts, REPLACE, DELETEs."""
    rng = random.Random(27)
    values = {"host": ["h1", "h2", "h3"], "task": ["t1", "t2", "T1"], "role": ["web", "db"],
              "kind": ["corrective", "recurring"], "state": ["open", "acknowledged", "accepted", "resolved"]}
    for n in range(1, 201):
        action = rng.choice(["insert", "replace", "update", "update", "update", "shift", "delete"])
        column = rng.choice(sorted(values))
        where = f"{column} = '{rng.choice(values[column])}'"
        if action in ("insert", "replace"):
            target = n if action == "insert" else rng.randint(1, n)
            _insert(lite, target, host=rng.choice(values["host"]), task=rng.choice(values["task"]),
                    state=rng.choice(values["state"]), kind=rng.choice(values["kind"]),
                    role=rng.choice(values["role"]), verb="INSERT OR REPLACE")
        elif action == "update":
            changed = rng.sample(sorted(values), rng.randint(1, 3))
            sets = ", ".join(f"{c} = '{rng.choice(values[c])}'" for c in changed)
            _sql(lite, f"UPDATE review_items SET {sets} WHERE {where}")
        elif action == "shift":
            _sql(lite, f"UPDATE review_items SET id = id + 1000, state = '{rng.choice(values['state'])}' "
                       f"WHERE {where}")
        else:
            _sql(lite, f"DELETE FROM review_items WHERE {where}")
        with lite.connect() as conn:
            kept = sorted(tuple(r) for r in conn.execute(select(drift_task_counts)))
            assert kept == live_counts(conn), (n, action, where)
    check_counts(lite)
