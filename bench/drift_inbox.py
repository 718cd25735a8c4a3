"""Drift inbox and compliance page timings: 10,000 hosts and 100,000 current drift items by default.

Seeds each host through `store.ingest` (one in-sync report: hosts, roles, review_hosts), then bulk-inserts
the drift items as `review_items` rows (10 per host by default, spread over 60 tasks and three states; the
accepted ones under one active exception) and 90 days of `compliance_daily` rows (fleet, 6 roles, 60
tasks). Then times each page in-process (the real app through httpx's ASGI transport: routing, auth,
queries, rendering) and prints median and 95th percentile of --repeat requests, and the time of one daily
snapshot (compliance_store.snapshot).

    .venv/bin/python bench/drift_inbox.py                     # 10k hosts, 100k items, SQLite
    .venv/bin/python bench/drift_inbox.py --hosts 1000        # quick check
    .venv/bin/python bench/drift_inbox.py --db-url postgresql+psycopg://USER@127.0.0.1:55432/EMPTY_DB

Target: every page under 200 ms (figures: bench/README.md). The evidence export of 1,000,000 runs is
bench/evidence_export.py.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.collector import compliance_store, db, store, tokens
from agent.collector.app import create_app
from agent.collector.context import Collector, CollectorSettings
from agent.collector.tables import compliance_daily, drift_exceptions, review_items
from agent.collector.tokens import TokenKind
from agent.report import Status, to_json
from tests.factory import BASE_TIME, make_report

ROLES = ("web", "db", "cache", "worker", "lb", "mq")
TASKS = [f"{role}: task {n}" for role in ROLES for n in range(10)]
STATES = ("open", "open", "acknowledged", "accepted")
TARGET_MS = 200.0


def seed(engine, hosts: int, per_host: int) -> None:
    with db.write(engine) as conn:
        exc_id = conn.execute(drift_exceptions.insert().values(
            scope="role", scope_fields=json.dumps({"role": "web", "role_kind": "ansible"}), owner="bench",
            reason="bench", ticket="BENCH-1", created_at=BASE_TIME - timedelta(days=1), created_by="bench",
            expires_at=BASE_TIME + timedelta(days=30))).inserted_primary_key[0]
    for i in range(hosts):
        role = ROLES[i % len(ROLES)]
        report = make_report(f"{role}{i:05d}.example.com", status=Status.IN_SYNC, roles=(role,),
                             finished_at=BASE_TIME - timedelta(minutes=5))
        store.ingest(engine, report, to_json(report).encode(), received_at=BASE_TIME)
    rows = []
    for i in range(hosts):
        role = ROLES[i % len(ROLES)]
        host = f"{role}{i:05d}.example.com"
        for n in range(per_host):
            task = TASKS[(i + n) % len(TASKS)]
            seen = BASE_TIME - timedelta(hours=1 + n)
            state = STATES[(i + n) % len(STATES)]
            rows.append({"accepted_by": exc_id if state == "accepted" else None,
                "key_sha256": hashlib.sha256(f"{host}|{task}".encode()).hexdigest(), "host": host, "role": role,
                "play": f"{role} servers", "ansible_role": role, "task_file": f"roles/{role}/tasks/main.yml",
                "task": task, "item": "", "nth": 0, "state": state, "kind": "corrective",
                "kinds": json.dumps([["corrective", seen.isoformat()]]), "first_seen_at": seen,
                "last_seen_at": BASE_TIME, "checks": 3, "commits": json.dumps(["ab" * 20]), "commit_count": 1,
                "module": "ansible.builtin.template", "task_path": f"roles/{role}/tasks/main.yml:3",
                "diff_sha256": hashlib.sha256(f"{task}|{i % 3}".encode()).hexdigest()})
            if len(rows) >= 20_000:
                with db.write(engine) as conn:
                    conn.execute(review_items.insert(), rows)
                rows = []
    if rows:
        with db.write(engine) as conn:
            conn.execute(review_items.insert(), rows)
    seed_series(engine, hosts)


def seed_series(engine, hosts: int, days: int = 90) -> None:
    """90 past days of daily rows, as the snapshot loop would have left them (shares drifting slowly)."""
    rows = []
    for d in range(1, days):
        day = (BASE_TIME - timedelta(days=d)).date().isoformat()
        scopes = [("fleet", "", hosts)] + [("role", r, hosts // len(ROLES)) for r in ROLES]
        scopes += [("task", compliance_store.task_scope(t.split(":")[0], t), hosts // len(ROLES)) for t in TASKS]
        for kind, scope, n in scopes:
            in_sync = n * (50 + (d * 7) % 40) // 100
            rows.append({"day": day, "scope_kind": kind, "scope": scope, "hosts": n, "in_sync": in_sync,
                         "in_sync_with_exceptions": min(n, in_sync + n // 10), "unknown": 0})
    with db.write(engine) as conn:
        conn.execute(compliance_daily.insert(), rows)


def p95(values: list[float]) -> float:
    """The 95th percentile (linear between the samples; the worst one below 20 samples or so)."""
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


async def time_pages(app, headers: dict[str, str], paths: list[str],
                     repeat: int) -> list[tuple[str, float, float, float]]:
    """Per path: median and 95th percentile wall time, and median CPU time of this process (all its
    threads: the app runs queries in worker threads), in ms. On a shared machine the CPU time is the
    steadier figure."""
    out = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for path in paths:
            times, cpu = [], []
            for _ in range(repeat):
                started, cpu_started = time.perf_counter(), time.process_time()
                response = await client.get(path, headers=headers)
                times.append((time.perf_counter() - started) * 1000)
                cpu.append((time.process_time() - cpu_started) * 1000)
                assert response.status_code == 200, (path, response.status_code, response.text[:200])
            out.append((path, statistics.median(times), p95(times), statistics.median(cpu)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--per-host", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db-url", help="an EMPTY database to fill (default: a temporary SQLite file)")
    parser.add_argument("--seeded", action="store_true",
                        help="--db-url was filled by an earlier run with the same --hosts: time it again")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.create(args.db_url or f"sqlite:///{tmp}/inbox.db")
        db.prepare(engine)
        started = time.monotonic()
        if not args.seeded:
            seed(engine, args.hosts, args.per_host)
        print(f"seeded {args.hosts} hosts, {args.hosts * args.per_host} items in {time.monotonic() - started:.0f}s")
        secret = tokens.create(engine, TokenKind.READER, "bench", now=BASE_TIME)[1]
        app = create_app(Collector(engine, CollectorSettings(), now=lambda: BASE_TIME))
        paths = ["/drift", "/drift?state=open", f"/drift?task={TASKS[0].replace(' ', '%20')}",
                 "/?sort=drift&order=desc", "/hosts/web00000.example.com", "/api/v1/drift",
                 "/api/v1/drift?group=host&state=accepted&limit=100",
                 "/compliance", "/api/v1/compliance", "/compliance/roles/web", "/api/v1/compliance/roles/web",
                 f"/api/v1/compliance/tasks?role=web&task={TASKS[0].replace(' ', '%20')}",
                 "/api/v1/compliance/hosts/web00000.example.com"]
        results = asyncio.run(time_pages(app, {"Authorization": f"Bearer {secret}"}, paths, args.repeat))
        worst = 0.0
        print(f"load average before timing: {os.getloadavg()[0]:.1f}")
        for path, median, high, cpu in results:
            worst = max(worst, median)
            print(f"{median:8.1f} ms median {high:8.1f} ms p95 {cpu:8.1f} ms CPU  {path}")
        print(f"target {TARGET_MS:.0f} ms: {'met' if worst < TARGET_MS else 'NOT met'} (worst median {worst:.1f} ms)")
        print(f"load average after timing: {os.getloadavg()[0]:.1f}")
        started = time.perf_counter()
        written = compliance_store.snapshot(engine, BASE_TIME)
        print(f"daily snapshot: {written} rows in {(time.perf_counter() - started) * 1000:.0f} ms")
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
