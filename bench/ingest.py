"""Ingest benchmark: N simulated agents send realistic reports to a collector on 127.0.0.1.

Each agent sends its reports one after another (as a real agent's sender does), all agents at once,
through one async HTTP client. Prints reports/s, p50/p99 latency and the lost count (reports
acknowledged with 2xx but missing from the database) for SQLite and PostgreSQL.

    .venv/bin/python bench/ingest.py --agents 50 --reports 20            # SQLite, and PostgreSQL if
    GITOPS_TEST_POSTGRES_URL=$(bash .ci/postgres-up) .venv/bin/python bench/ingest.py   # the URL is set

Bounded: at most --agents x --reports reports and --max-seconds per database; traffic only to 127.0.0.1.
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.collector import db, tokens
from agent.collector.tables import runs
from agent.collector.tokens import TokenKind
from agent.report import DriftKind, Status, to_json
from tests.factory import BASE_TIME, drift_item, make_report
from tests.live_collector import PG_ENV, CollectorProcess, fresh_database

STATUSES = [Status.IN_SYNC] * 14 + [Status.DRIFTED] * 4 + [Status.CORRECTED, Status.FAILED]


@dataclass
class Tally:
    latencies_s: list[float] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    statuses: dict[str, int] = field(default_factory=dict)


def realistic_body(host: str, rng: random.Random, drift_items: int) -> tuple[str, bytes]:
    status = rng.choice(STATUSES)
    drift = ()
    if status in (Status.DRIFTED, Status.CORRECTED):
        kinds = list(DriftKind)
        drift = tuple(drift_item(f"task {rng.randrange(40)}", kind=rng.choice(kinds), diffs=rng.randint(1, 3))
                      for _ in range(rng.randint(1, drift_items)))
    report = make_report(host, status=status, drift=drift, finished_at=BASE_TIME)
    return report.run_id, to_json(report).encode()


async def agent(client: httpx.AsyncClient, host: str, secret: str, count: int, deadline: float,
                tally: Tally, drift_items: int) -> None:
    rng = random.Random(host)
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    for _ in range(count):
        if time.monotonic() > deadline:
            return
        run_id, body = realistic_body(host, rng, drift_items)
        started = time.perf_counter()
        try:
            response = await client.post("/api/v1/reports", content=body, headers=headers)
            key = str(response.status_code)
        except httpx.HTTPError as e:
            key = type(e).__name__
        tally.latencies_s.append(time.perf_counter() - started)
        tally.statuses[key] = tally.statuses.get(key, 0) + 1
        if key in ("200", "201"):
            tally.acked.add(run_id)


async def drive(url: str, secrets: dict[str, str], count: int, max_seconds: float, drift_items: int) -> Tally:
    tally = Tally()
    limits = httpx.Limits(max_connections=len(secrets), max_keepalive_connections=len(secrets))
    deadline = time.monotonic() + max_seconds
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(agent(client, host, secret, count, deadline, tally, drift_items)
                               for host, secret in secrets.items()))
    return tally


def run_one(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    with fresh_database(kind, workdir) as url:
        engine = db.create(url)
        db.prepare(engine)
        now = BASE_TIME
        hosts = [f"host{i:05d}.bench" for i in range(args.agents)]
        secrets = {h: tokens.create(engine, TokenKind.INGEST, h, now=now)[1] for h in hosts}
        server = CollectorProcess(url, None, *args.serve_args).start()
        try:
            started = time.perf_counter()
            tally = asyncio.run(drive(server.url, secrets, args.reports, args.max_seconds, args.drift_items))
            elapsed = time.perf_counter() - started
        finally:
            server.stop()
        with engine.connect() as conn:
            stored = set(conn.execute(select(runs.c.run_id)).scalars())
        engine.dispose()
    latencies = sorted(tally.latencies_s)
    sent = len(latencies)
    return {
        "db": kind, "sent": sent, "seconds": elapsed, "rate": sent / elapsed if elapsed else 0.0,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "p99_ms": latencies[min(sent - 1, int(sent * 0.99))] * 1000 if latencies else 0.0,
        "lost": len(tally.acked - stored), "statuses": tally.statuses,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--reports", type=int, default=20, help="reports per agent")
    parser.add_argument("--drift-items", type=int, default=5, help="most drift items in a drifted report")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per database")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[],
                        help="passed to `gitops-collector serve`, e.g. --serve-args --db-threads 4")
    args = parser.parse_args()
    if not (1 <= args.agents <= 2000 and 1 <= args.reports <= 10000 and args.max_seconds <= 900):
        parser.error("keep it bounded: agents 1..2000, reports 1..10000, max-seconds <= 900")
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    if "postgresql" in kinds and not os.environ.get(PG_ENV):
        print(f"skipping PostgreSQL: {PG_ENV} is not set (export {PG_ENV}=$(bash .ci/postgres-up))")
        kinds.remove("postgresql")
    print(f"{args.agents} agents x {args.reports} reports, up to {args.drift_items} drift items each")
    print(f"{'db':<11} {'sent':>6} {'seconds':>8} {'reports/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5}"
          "  statuses")
    with tempfile.TemporaryDirectory(prefix="gitops-bench-") as tmp:
        for kind in kinds:
            r = run_one(kind, args, Path(tmp))
            print(f"{r['db']:<11} {r['sent']:>6} {r['seconds']:>8.2f} {r['rate']:>10.1f} {r['p50_ms']:>8.1f} "
                  f"{r['p99_ms']:>8.1f} {r['lost']:>5}  {r['statuses']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
