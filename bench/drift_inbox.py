"""Drift inbox page timings in SQLite: 10,000 hosts and 100,000 current drift items by default.

Seeds each host through `store.ingest` (one in-sync report: hosts, roles, review_hosts), then bulk-inserts
the drift items as `review_items` rows (10 per host by default, spread over 60 tasks and three states).
Then times each page in-process (the real app through httpx's ASGI transport: routing, auth, queries,
rendering) and prints median and worst of --repeat requests.

    .venv/bin/python bench/drift_inbox.py                     # 10k hosts, 100k items
    .venv/bin/python bench/drift_inbox.py --hosts 1000        # quick check

Target: every page under 200 ms. Not measured here: the compliance page (not built yet); the evidence
export of 1,000,000 runs is bench/evidence_export.py.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.collector import db, store, tokens
from agent.collector.app import create_app
from agent.collector.context import Collector, CollectorSettings
from agent.collector.tables import review_items
from agent.collector.tokens import TokenKind
from agent.report import Status, to_json
from tests.factory import BASE_TIME, make_report

ROLES = ("web", "db", "cache", "worker", "lb", "mq")
TASKS = [f"{role}: task {n}" for role in ROLES for n in range(10)]
STATES = ("open", "open", "acknowledged", "accepted")
TARGET_MS = 200.0


def seed(engine, hosts: int, per_host: int) -> None:
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
            rows.append({
                "key_sha256": hashlib.sha256(f"{host}|{task}".encode()).hexdigest(), "host": host, "role": role,
                "play": f"{role} servers", "ansible_role": role, "task_file": f"roles/{role}/tasks/main.yml",
                "task": task, "item": "", "nth": 0, "state": STATES[(i + n) % len(STATES)], "kind": "corrective",
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


async def time_pages(app, headers: dict[str, str], paths: list[str], repeat: int) -> list[tuple[str, float, float]]:
    out = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for path in paths:
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                response = await client.get(path, headers=headers)
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, (path, response.status_code, response.text[:200])
            out.append((path, statistics.median(times), max(times)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--per-host", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.create(f"sqlite:///{tmp}/inbox.db")
        db.prepare(engine)
        started = time.monotonic()
        seed(engine, args.hosts, args.per_host)
        print(f"seeded {args.hosts} hosts, {args.hosts * args.per_host} items in {time.monotonic() - started:.0f}s")
        secret = tokens.create(engine, TokenKind.READER, "bench", now=BASE_TIME)[1]
        app = create_app(Collector(engine, CollectorSettings(), now=lambda: BASE_TIME))
        paths = ["/drift", "/drift?state=open", f"/drift?task={TASKS[0].replace(' ', '%20')}",
                 "/?sort=drift&order=desc", "/hosts/web00000.example.com", "/api/v1/drift",
                 "/api/v1/drift?group=host&state=accepted&limit=100"]
        results = asyncio.run(time_pages(app, {"Authorization": f"Bearer {secret}"}, paths, args.repeat))
        worst = 0.0
        for path, median, high in results:
            worst = max(worst, median)
            print(f"{median:8.1f} ms median {high:8.1f} ms worst  {path}")
        print(f"target {TARGET_MS:.0f} ms: {'met' if worst < TARGET_MS else 'NOT met'} (worst median {worst:.1f} ms)")
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
