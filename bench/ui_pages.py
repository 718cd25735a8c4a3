"""Web UI page timings over a large fleet in SQLite: 10,000 hosts and 1,000,000 runs by default.

Seeds through the store's own row builders in bulk transactions (not HTTP): each host's latest report goes
through the store's commit/host upserts, older runs are bulk-inserted rows (sharing one compressed report
body). Then times each page in-process (the real app through httpx's ASGI transport, so the figure is
server time: routing, auth, queries, rendering) and prints median and worst of --repeat requests.

    .venv/bin/python bench/ui_pages.py                      # 10k hosts, 1M runs (a few minutes to seed)
    .venv/bin/python bench/ui_pages.py --runs 100000        # quick check
    .venv/bin/python bench/ui_pages.py --db /tmp/ui.db --reuse   # time again without seeding

Target: every page under 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, event, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.collector import db, store, tokens
from agent.collector.app import create_app
from agent.collector.context import Collector, CollectorSettings
from agent.collector.tables import drift_items, host_commits, hosts, runs
from agent.collector.tokens import TokenKind
from agent.report import DriftKind, Status, to_json
from tests.factory import BASE_TIME, drift_item, make_report

ROLES = ("web", "db", "cache", "worker", "lb", "mq")
COMMITS = [f"{i:02x}" + uuid.UUID(int=i * 7919).hex[:38] for i in range(1, 21)]
STATUSES = [Status.IN_SYNC] * 14 + [Status.DRIFTED] * 3 + [Status.CORRECTED, Status.FAILED, Status.ERROR]
TASKS = [f"{role}: task {n}" for role in ROLES for n in range(8)]
BATCH = 20_000
TARGET_MS = 200.0


def host_name(i: int) -> str:
    return f"{ROLES[i % len(ROLES)]}{i:05d}.dc{i % 4}.example.com"


def latest_report(i: int, rng: random.Random) -> Any:
    status = rng.choice(STATUSES)
    role = ROLES[i % len(ROLES)]
    drift = ()
    if status in (Status.DRIFTED, Status.CORRECTED):
        tasks = rng.sample([t for t in TASKS if t.startswith(role)], rng.randint(1, 3))
        drift = tuple(drift_item(t, role=role, kind=rng.choice(list(DriftKind))) for t in tasks)
    commit = COMMITS[-1] if rng.random() < 0.7 else rng.choice(COMMITS[-4:-1])
    return make_report(host_name(i), status=status, commit=commit, roles=(role, "base"), drift=drift,
                       finished_at=BASE_TIME - timedelta(minutes=rng.randint(0, 50)))


def seed_latest(engine: Engine, n_hosts: int, rng: random.Random) -> list[Any]:
    """Each host's latest report through the store's row builders and upserts, in bulk transactions."""
    reports = [latest_report(i, rng) for i in range(n_hosts)]
    expect = store.Expectations()
    for start in range(0, n_hosts, 1000):
        with db.write(engine) as conn:
            for report in reports[start:start + 1000]:
                received = report.finished_at + timedelta(seconds=1)
                conn.execute(runs.insert(), store._run_row(report, to_json(report).encode(), received))
                store._insert_drift(conn, report)
                store._upsert_commit(conn, report, received)
                store._upsert_host(conn, report, received, expect)
    return reports


def history_rows(reports: list[Any], n_runs: int, rng: random.Random) -> Any:
    """Older runs, 30 minutes apart per host, as row dicts (one shared compressed body)."""
    blob = store.compress(to_json(make_report("history")).encode())
    per_host = max(0, n_runs - len(reports)) // max(1, len(reports))
    for step in range(1, per_host + 1):
        for report in reports:
            finished = report.finished_at - timedelta(minutes=30 * step)
            status = rng.choice(STATUSES).value
            yield {"run_id": str(uuid.UUID(int=rng.getrandbits(128))), "host": report.host, "status": status,
                   "mode": "enforce", "trigger": "schedule", "phase_reached": "done",
                   "commit": COMMITS[max(0, len(COMMITS) - 1 - step // 40)], "ref": "main",
                   "previous_commit": None, "agent_version": "0.1.0",
                   "started_at": finished - timedelta(seconds=40), "finished_at": finished,
                   "received_at": finished, "drift_count": 1 if status == "drifted" else 0, "changed": 0,
                   "failed_count": 0, "error_count": 0, "compacted": 0, "duration_s": 40.0, "report": blob}


def seed_history(engine: Engine, reports: list[Any], n_runs: int, rng: random.Random) -> int:
    batch: list[dict[str, Any]] = []
    total = 0
    for row in history_rows(reports, n_runs, rng):
        batch.append(row)
        if len(batch) >= BATCH:
            total += _flush(engine, batch)
    return total + _flush(engine, batch)


def _flush(engine: Engine, batch: list[dict[str, Any]]) -> int:
    if not batch:
        return 0
    drift = [{"run_id": r["run_id"], "host": r["host"], "play": "p", "role": "web", "module": "template",
              "task": TASKS[sum(r["host"].encode()) % len(TASKS)], "kind": "corrective", "diff_count": 1,
              "first_seen_at": r["finished_at"]} for r in batch if r["drift_count"]]
    pairs = sorted({(r["commit"], r["host"]) for r in batch})  # host_commits, as ingest keeps it
    with db.write(engine) as conn:
        conn.execute(runs.insert(), batch)
        conn.execute(store._insert_ignore_stmt(conn.dialect.name, host_commits),
                     [{"commit": c, "host": h} for c, h in pairs])
        if drift:
            conn.execute(drift_items.insert(), drift)
    count = len(batch)
    batch.clear()
    return count


def _fast_writes(dbapi_connection: Any, _record: Any) -> None:
    """Seeding only: no fsync per transaction (a crash would just mean seeding again)."""
    dbapi_connection.execute("PRAGMA synchronous=OFF")


def pages(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        some_host = conn.execute(select(hosts.c.host).where(hosts.c.drift_count > 0).limit(1)).scalar_one()
        run_id = conn.execute(select(hosts.c.last_run_id).where(hosts.c.host == some_host)).scalar_one()
        task_q = select(drift_items.c.task).where(drift_items.c.run_id == run_id)
        task = conn.execute(task_q).scalars().first()
    task_q = httpx.QueryParams({"task": task})
    return ["/", "/?status=drifted", "/?status=failed&sort=last_seen&order=desc", "/?role=db&sort=commit",
            "/?q=00123", "/?offset=9950", f"/?commit={COMMITS[-2][:8]}", "/stale", f"/hosts/{some_host}",
            f"/runs/{run_id}", "/drift", f"/drift?{task_q}", f"/commits/{COMMITS[-1]}",
            f"/commits/{COMMITS[-1]}?hosts=not_reached", "/commits", "/?sort=status", "/api/v1/hosts?limit=100",
            "/api/v1/runs?limit=100", "/api/v1/runs?status=failed&limit=100", "/metrics"]


async def time_pages(engine: Engine, repeat: int) -> list[tuple[str, float, float, float, int]]:
    secret = tokens.create(engine, TokenKind.READER, "bench", now=BASE_TIME)[1]
    now = BASE_TIME + timedelta(minutes=5)
    app = create_app(Collector(engine, CollectorSettings(), now=lambda: now))
    results = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench",
                                 headers={"Authorization": f"Bearer {secret}"}) as client:
        for path in pages(engine):
            times, cpu = [], []
            for _ in range(repeat):
                started, cpu_started = time.perf_counter(), time.process_time()
                response = await client.get(path)
                times.append((time.perf_counter() - started) * 1000)
                cpu.append((time.process_time() - cpu_started) * 1000)
            results.append((path, statistics.median(times), max(times), statistics.median(cpu),
                            response.status_code))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", help="SQLite file (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="the --db file is already seeded")
    args = parser.parse_args()
    path = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "ui-bench.db"
    engine = db.create(f"sqlite:///{path}")
    event.listen(engine, "connect", _fast_writes)
    db.migrate(engine)  # creates the schema, or upgrades a --reuse database
    rng = random.Random(42)
    if not args.reuse:
        started = time.perf_counter()
        reports = seed_latest(engine, args.hosts, rng)
        older = seed_history(engine, reports, args.runs, rng)
        took = time.perf_counter() - started
        print(f"seeded {len(reports)} hosts, {len(reports) + older} runs in {took:.0f}s")
    with engine.connect() as conn:
        n_runs = conn.execute(select(func.count()).select_from(runs)).scalar_one()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"database {path}: {n_runs} runs; timing each page {args.repeat}x (in-process, server time); "
          f"load average {load} on {os.cpu_count()} cores")
    results = asyncio.run(time_pages(engine, args.repeat))
    # wall: what a user waits for (inflated when other processes share the cores); cpu: this process's
    # CPU time for the request, database threads included (the cost on an idle machine, roughly)
    print(f"{'page':<58} {'median ms':>10} {'max ms':>8} {'cpu ms':>7}  status")
    for page_path, median, worst, cpu, status in results:
        flag = "" if median < TARGET_MS else "  OVER TARGET"
        print(f"{page_path[:58]:<58} {median:>10.1f} {worst:>8.1f} {cpu:>7.1f}  {status}{flag}")
    engine.dispose()
    return 0 if all(r[1] < TARGET_MS and r[4] == 200 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
