"""CPU per report of the group-commit writer (`store.ingest_group`) alone: its batched statements through
SQLAlchemy's `conn.execute` against straight to the driver (`bulk.executemany`), in one process.

The writer's part of ingest, without HTTP, parsing or the load generator, so that a shared machine's
noise (which swamps a change of ~0.1 ms per report in `bench/ingest_wrk.py`) is smaller. The reports are
the ones `bench/ingest_wrk.py` posts (`bench.ingest.realistic_body`, parsed by `payload.parse_report`
before the clock starts), --hosts per batch (each host once, as under `wrk` with one connection per host),
--batches batches per measurement on a fresh database, the two routes alternating, --rounds times.
Prints the process CPU time per report (on PostgreSQL the server's CPU is not in it) and the medians.

    .venv/bin/python bench/ingest_group.py
    . .ci/test-env; .venv/bin/python bench/ingest_group.py --db postgresql
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.collector import bulk, db, store
from agent.collector.payload import PayloadLimits, parse_report
from bench.ingest import realistic_body
from tests.factory import BASE_TIME
from tests.live_collector import fresh_database


def batches_of(hosts: int, count: int, drift_items: int) -> list[list[tuple]]:
    rngs = {f"host{i:05d}.bench": random.Random(i) for i in range(hosts)}
    limits = PayloadLimits()
    out = []
    for n in range(count):
        at = BASE_TIME + timedelta(seconds=n)
        batch = []
        for host, rng in rngs.items():
            raw = realistic_body(host, rng, drift_items)[1]
            batch.append((parse_report(raw, limits), raw, at))
        out.append(batch)
    return out


def measure(url: str, batches: list[list[tuple]], through_sqlalchemy: bool) -> float:
    """CPU microseconds per report of store.ingest_group over `batches` (the first one not counted)."""
    engine = db.create(url)
    db.prepare(engine)
    bulk.THROUGH_SQLALCHEMY = through_sqlalchemy
    try:
        store.ingest_group(engine, batches[0])  # warm-up: statements compiled, hosts and review rows exist
        started = time.process_time()
        for batch in batches[1:]:
            results = store.ingest_group(engine, batch)
            if results != [True] * len(batch):
                raise RuntimeError(f"not stored: {[r for r in results if r is not True][:3]}")
        used = time.process_time() - started
    finally:
        bulk.THROUGH_SQLALCHEMY = False
        engine.dispose()
    return used / sum(len(b) for b in batches[1:]) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--hosts", type=int, default=50, help="reports per batch, one per host")
    parser.add_argument("--batches", type=int, default=20, help="batches per measurement (plus a warm-up)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--drift-items", type=int, default=5)
    args = parser.parse_args()
    if not (1 <= args.hosts <= 2000 and 1 <= args.batches <= 200 and 1 <= args.rounds <= 20):
        parser.error("keep it bounded: hosts 1..2000, batches 1..200, rounds 1..20")
    batches = batches_of(args.hosts, args.batches + 1, args.drift_items)
    routes = {"sqlalchemy (conn.execute)": True, "driver (bulk.executemany)": False}
    got: dict[str, list[float]] = {name: [] for name in routes}
    print(f"{args.db}: {args.batches} batches of {args.hosts} reports per measurement, CPU us per report")
    for round_no in range(1, args.rounds + 1):
        for name, through in routes.items():
            with tempfile.TemporaryDirectory(prefix="gitops-bench-") as tmp, \
                    fresh_database(args.db, Path(tmp)) as url:
                us = measure(url, batches, through)
            got[name].append(us)
            print(f"  round {round_no}  {name:<26} {us:8.1f}")
    medians = {name: statistics.median(values) for name, values in got.items()}
    old, new = medians.values()
    print("median: " + ", ".join(f"{name} {us:.1f} us" for name, us in medians.items())
          + f": ratio {new / old:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
