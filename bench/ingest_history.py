"""The group-commit writer's cost per report as the collector's history grows, on one SQLite file.

`bench/ingest_group.py` and `bench/ingest_wrk.py` measure on fresh databases; a collector that has kept a
few weeks of runs pays more per report, because each report's rows land in more distinct index pages
(more WAL written and fsync'd per commit) and because any read that scans a host's history grows with it.
This stores --reports reports with `store.ingest_group` (batches of --hosts reports, one per host, as
`wrk` posts them, parsed before the clock starts) into one fresh SQLite file and prints, every --chunk
reports: wall and CPU milliseconds per report, the slowest batch, and the files' size. With --baseline
DIR (a tree made by `git archive <commit> agent bench tests | tar -x -C DIR`), the same run of that tree
follows in its own process, then the two are printed side by side with their ratio (new / old). The
two runs are sequential, so a shared machine's noise is in the ratio; run it twice.

--run-ids says what the reports' run_ids look like: `uuid4` (random, what agents send: report schema v1) or
`uuid7` (time-ordered, RFC 9562 section 5.7), to see what time-ordered ones would change.

    .venv/bin/python bench/ingest_history.py --reports 60000 --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the tree under test (cwd and PYTHONPATH): prints one JSON line per chunk.
CHILD = r"""
import dataclasses, json, os, secrets, sys, tempfile, time, uuid
from bench.ingest_group import batches_of
from agent.collector import db, store
reports, chunk, hosts, ids = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def uuid7():
    b = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + secrets.token_bytes(10))
    b[6] = (b[6] & 0x0F) | 0x70
    b[8] = (b[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(b)))

new_id = uuid7 if ids == "uuid7" else (lambda: str(uuid.uuid4()))
per_chunk = max(1, chunk // hosts)
batches = batches_of(hosts, per_chunk * 2, 5)  # two chunks' worth, reused with fresh run_ids
with tempfile.TemporaryDirectory(prefix="gitops-bench-") as tmp:
    path = os.path.join(tmp, "collector.db")
    engine = db.create(f"sqlite:///{path}")
    db.prepare(engine)
    stored, n = 0, 0
    while stored < reports:
        wall, cpu, slowest, count = time.perf_counter(), time.process_time(), 0.0, 0
        for batch in batches[(n % 2) * per_chunk:(n % 2 + 1) * per_chunk]:
            fresh = [(dataclasses.replace(r, run_id=new_id()), raw, at) for r, raw, at in batch]
            started = time.perf_counter()
            results = store.ingest_group(engine, fresh)
            slowest = max(slowest, time.perf_counter() - started)
            if results != [True] * len(fresh):
                raise SystemExit(f"not stored: {[r for r in results if r is not True][:3]}")
            count += len(fresh)
        stored += count
        n += 1
        size = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
        print(json.dumps({"stored": stored, "wall_ms": 1e3 * (time.perf_counter() - wall) / count,
                          "cpu_ms": 1e3 * (time.process_time() - cpu) / count, "slowest_ms": 1e3 * slowest,
                          "mb": size / 1e6}), flush=True)
    engine.dispose()
"""


def run(tree: Path, args: argparse.Namespace, label: str) -> list[dict[str, float]]:
    print(f"{label}: {tree}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(args.reports), str(args.chunk), str(args.hosts),
                             args.run_ids], cwd=tree, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    rows = []
    for line in proc.stdout:
        row = json.loads(line)
        rows.append(row)
        print(f"  {label} {row['stored']:>8,} stored: wall {row['wall_ms']:.3f} ms/report, CPU "
              f"{row['cpu_ms']:.3f}, slowest batch {row['slowest_ms']:.0f} ms, files {row['mb']:.0f} MB",
              flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"{label}: the writer's run failed (exit {proc.returncode})")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=60_000, help="reports to store (default 60,000)")
    parser.add_argument("--chunk", type=int, default=5_000, help="reports per printed line (default 5,000)")
    parser.add_argument("--hosts", type=int, default=200, help="reports per batch, one per host (default 200)")
    parser.add_argument("--run-ids", choices=["uuid4", "uuid7"], default="uuid4")
    parser.add_argument("--baseline", type=Path, help="an older tree to run the same way, after this one")
    args = parser.parse_args()
    if not (1 <= args.hosts <= 2000 and args.hosts <= args.chunk <= args.reports <= 2_000_000):
        parser.error("keep it bounded: 1 <= hosts <= 2000, hosts <= chunk <= reports <= 2,000,000")
    if args.baseline is not None and not (args.baseline / "agent" / "collector" / "store.py").is_file():
        parser.error(f"--baseline {args.baseline}: not a tree with agent/collector/store.py")
    print(f"SQLite, batches of {args.hosts} reports, run_ids {args.run_ids}; ms per report", flush=True)
    new = run(ROOT, args, "new")
    if args.baseline is None:
        return 0
    old = run(args.baseline.resolve(), args, "old")
    print("side by side (old -> new, ratio new/old):")
    for o, n in zip(old, new, strict=True):
        print(f"  {n['stored']:>8,}: wall {o['wall_ms']:.3f} -> {n['wall_ms']:.3f} ({n['wall_ms'] / o['wall_ms']:.2f}), "
              f"CPU {o['cpu_ms']:.3f} -> {n['cpu_ms']:.3f} ({n['cpu_ms'] / o['cpu_ms']:.2f}), slowest batch "
              f"{o['slowest_ms']:.0f} -> {n['slowest_ms']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
