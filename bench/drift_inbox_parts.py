"""Where the drift inbox's time goes: the page `/drift` split into its parts, and what any live read of
the current items costs at least, on a database bench/drift_inbox.py seeded (SQLite).

Parts, each timed alternately in the same rounds (median of --repeat; CPU is this process's, all threads:
the app runs queries in worker threads; on a shared machine it is the steadier figure):

- `page /drift`: the whole request in-process (the real app through httpx's ASGI transport);
- `drift_by_task`: the inbox aggregate as the page calls it (no HTTP, no rendering);
- `  sql N`: each statement drift_by_task executes, captured from SQLAlchemy and run again alone (`xK`:
  the same statement K times with different parameters, e.g. one read per task shown);
- `_live_by_task` (from migration 0012 on): the live aggregate over the items that drift_by_task read
  before the per-task counts, timed in the same rounds;
- `render drift.html`: the template with that result;
- `floor: ...`: plain SQLite reads of the same partial index (ix_review_items_task_current) that do less
  than the inbox needs: one scan counting rows, a GROUP BY task identity counting rows only, and the
  inbox's aggregate without count(DISTINCT host). No live read of the items is cheaper than these;
- with --integer-key, on a temporary copy of the database: the inbox's aggregate grouped by an integer
  task key (a table of task identities, a `task_id` column and a partial covering index on it, as a
  migration could add) instead of the five text columns of the task identity;
- `variant: ...`: the inbox's aggregate written other ways, with the same figures: two FILTER counts
  fewer (`open` and `corrective` derived from the total); the states and kinds packed into one CASE sum
  each (the same figures below 65,536 items of a kind per task); the plain aggregate on a connection
  with SQLite's `mmap_size` at 256 MiB.

    .venv/bin/python bench/drift_inbox.py --db-url sqlite:////tmp/inbox.db        # seeds once
    .venv/bin/python bench/drift_inbox_parts.py --db /tmp/inbox.db --repeat 11 --integer-key
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.collector import db, queries, tokens
from agent.collector.app import create_app
from agent.collector.context import Collector, CollectorSettings
from agent.collector.tokens import TokenKind
from agent.collector.ui_render import render_page
from tests.factory import BASE_TIME

IDENTITY = "task, play, role, ansible_role, task_file"
CURRENT = "FROM review_items WHERE state != 'resolved'"
FLOORS = {
    "floor: scan, count(*)": f"SELECT count(*) {CURRENT}",
    "floor: GROUP BY task, count(*)": f"SELECT {IDENTITY}, count(*) {CURRENT} GROUP BY {IDENTITY}",
    "floor: aggregate without DISTINCT host": (
        f"SELECT {IDENTITY}, max(module), count(*), min(first_seen_at), max(last_seen_at), "
        "count(*) FILTER (WHERE kind = 'corrective'), count(*) FILTER (WHERE kind = 'intentional'), "
        "count(*) FILTER (WHERE kind = 'recurring'), count(*) FILTER (WHERE kind = 'unverifiable'), "
        "count(*) FILTER (WHERE state = 'open'), count(*) FILTER (WHERE state = 'acknowledged'), "
        f"count(*) FILTER (WHERE state = 'accepted') {CURRENT} GROUP BY {IDENTITY}"),
}
VARIANTS = {
    "variant: two FILTER counts fewer": (
        f"SELECT {IDENTITY}, max(module), count(DISTINCT host), count(*), min(first_seen_at), "
        "max(last_seen_at), count(*) FILTER (WHERE kind = 'intentional'), "
        "count(*) FILTER (WHERE kind = 'recurring'), count(*) FILTER (WHERE kind = 'unverifiable'), "
        "count(*) FILTER (WHERE state = 'acknowledged'), count(*) FILTER (WHERE state = 'accepted') "
        f"{CURRENT} GROUP BY {IDENTITY}"),
    "variant: counts packed in two CASE sums": (
        f"SELECT {IDENTITY}, max(module), count(DISTINCT host), count(*), min(first_seen_at), "
        "max(last_seen_at), sum(CASE kind WHEN 'corrective' THEN 1 WHEN 'intentional' THEN 65536 "
        "WHEN 'recurring' THEN 4294967296 WHEN 'unverifiable' THEN 281474976710656 ELSE 0 END), "
        "sum(CASE state WHEN 'open' THEN 1 WHEN 'acknowledged' THEN 2097152 "
        f"WHEN 'accepted' THEN 4398046511104 ELSE 0 END) {CURRENT} GROUP BY {IDENTITY}"),
}
AGGREGATE = (
    "max(module), count(DISTINCT host), count(*), min(first_seen_at), max(last_seen_at), "
    "count(*) FILTER (WHERE kind = 'corrective'), count(*) FILTER (WHERE kind = 'intentional'), "
    "count(*) FILTER (WHERE kind = 'recurring'), count(*) FILTER (WHERE kind = 'unverifiable'), "
    "count(*) FILTER (WHERE state = 'open'), count(*) FILTER (WHERE state = 'acknowledged'), "
    f"count(*) FILTER (WHERE state = 'accepted') {CURRENT}")
INTEGER_KEY = f"""
CREATE TABLE bench_tasks (id INTEGER PRIMARY KEY, {IDENTITY}, UNIQUE ({IDENTITY}));
INSERT INTO bench_tasks ({IDENTITY}) SELECT DISTINCT {IDENTITY} {CURRENT};
ALTER TABLE review_items ADD COLUMN task_id INTEGER;
UPDATE review_items SET task_id = (SELECT t.id FROM bench_tasks t WHERE t.task = review_items.task
  AND t.play = review_items.play AND t.role = review_items.role
  AND t.ansible_role = review_items.ansible_role AND t.task_file = review_items.task_file);
CREATE INDEX bench_task_id_current ON review_items (task_id, host, kind, state, accepted_by, module,
  first_seen_at, last_seen_at) WHERE state != 'resolved';
ANALYZE;
"""


def captured_statements(engine: Any) -> list[tuple[str, Any]]:
    """The SQL text and parameters of each statement one drift_by_task call executes."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):  # not db.py's BEGIN
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        queries.drift_by_task(engine, queries.Page(), now=BASE_TIME)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return seen


def statement_parts(engine: Any, raw: sqlite3.Connection) -> dict[str, Callable[[], Any]]:
    """The live aggregate (from migration 0012 on: the read the per-task counts replace), then one part
    per distinct statement drift_by_task executes, run with each of its parameters."""
    parts: dict[str, Callable[[], Any]] = {}
    if hasattr(queries, "_live_by_task"):
        parts["_live_by_task (the live aggregate)"] = (
            lambda: queries._live_by_task(engine, queries.Page(), now=BASE_TIME))
    statements: dict[str, list[Any]] = {}
    for sql, params in captured_statements(engine):
        statements.setdefault(sql, []).append(params)
    for n, (sql, runs) in enumerate(statements.items(), 1):
        times = f" x{len(runs)}" if len(runs) > 1 else ""
        parts[f"  sql {n}{times}: {' '.join(sql.split())[:60]}..."] = (
            lambda sql=sql, runs=runs: [raw.execute(sql, params).fetchall() for params in runs])
    return parts


def check_db(path: str) -> str | None:
    """What is wrong with `path` as this benchmark's database, or None."""
    if not Path(path).is_file():
        return f"no such file: {path}"
    try:
        seeded = sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'ix_review_items_task_current'").fetchone()[0]
    except sqlite3.DatabaseError as e:
        return f"{path} is not a SQLite database ({e})"
    if not seeded:
        return (f"{path} has no index ix_review_items_task_current: seed it with bench/drift_inbox.py "
                "and migrate it to 0011 or later (gitops-collector migrate)")
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a SQLite file seeded by bench/drift_inbox.py")
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--integer-key", action="store_true",
                        help="also time the aggregate grouped by an integer task key (on a temporary copy)")
    args = parser.parse_args()
    problem = check_db(args.db)
    if problem:
        parser.error(f"--db: {problem}")
    engine = db.create(f"sqlite:///{args.db}")
    secret = tokens.create(engine, TokenKind.READER, "bench", now=BASE_TIME)[1]
    app = create_app(Collector(engine, CollectorSettings(), now=lambda: BASE_TIME))
    listing = queries.drift_by_task(engine, queries.Page(), now=BASE_TIME)
    raw = sqlite3.connect(args.db)
    context = {"page": queries.Page(), "api": "/api/v1/drift", "now": BASE_TIME, "path": "/drift",
               "link": lambda **changes: "/drift", "reader": None, "review": None,
               "filters": {"task": None, "kind": None, "role": None, "host": None, "state": None}}

    async def get_page() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            response = await client.get("/drift", headers={"Authorization": f"Bearer {secret}"})
            assert response.status_code == 200, response.status_code

    parts: dict[str, Callable[[], Any]] = {
        "page /drift": lambda: asyncio.run(get_page()),
        "drift_by_task": lambda: queries.drift_by_task(engine, queries.Page(), now=BASE_TIME),
    }
    parts.update(statement_parts(engine, raw))
    parts["render drift.html"] = lambda: render_page("drift.html", tasks=listing, **context)
    for name, sql in FLOORS.items():
        parts[name] = lambda sql=sql: raw.execute(sql).fetchall()
    for name, sql in VARIANTS.items():
        parts[name] = lambda sql=sql: raw.execute(sql).fetchall()
    mapped = sqlite3.connect(args.db)
    mapped.execute("PRAGMA mmap_size = 268435456")
    parts["variant: mmap_size 256 MiB"] = (
        lambda: mapped.execute(f"SELECT {IDENTITY}, {AGGREGATE} GROUP BY {IDENTITY}").fetchall())
    tmp = tempfile.TemporaryDirectory()
    if args.integer_key:
        keyed = sqlite3.connect(f"{tmp.name}/keyed.db")
        raw.backup(keyed)
        keyed.executescript(INTEGER_KEY)
        parts["aggregate, five text columns (the copy)"] = (
            lambda: keyed.execute(f"SELECT {IDENTITY}, {AGGREGATE} GROUP BY {IDENTITY}").fetchall())
        parts["aggregate, integer task key (the copy)"] = (
            lambda: keyed.execute(f"SELECT task_id, {AGGREGATE} GROUP BY task_id").fetchall())
    for part in parts.values():  # warm: templates compiled, pages in the OS cache
        part()
    cpu: dict[str, list[float]] = {name: [] for name in parts}
    wall: dict[str, list[float]] = {name: [] for name in parts}
    print(f"load average before timing: {os.getloadavg()[0]:.1f}")
    for _ in range(args.repeat):
        for name, part in parts.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            part()
            cpu[name].append((time.process_time() - cpu_started) * 1000)
            wall[name].append((time.perf_counter() - started) * 1000)
    for name in parts:
        print(f"{statistics.median(wall[name]):8.1f} ms median {statistics.median(cpu[name]):8.1f} ms CPU  {name}")
    print(f"load average after timing: {os.getloadavg()[0]:.1f}")
    engine.dispose()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
