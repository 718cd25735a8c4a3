"""Instructions per report of the group-commit writer (`store.ingest_group`) alone, counted by valgrind's
callgrind: this checkout against another one (--baseline), on two workloads.

CPU time on a shared virtual machine moves by 10-30% between runs of the same code (bench/README.md,
"Ninth pass"), which hides a change of 5%. The count of instructions the process executes hardly moves,
so it compares two versions of the writer where time cannot. It is a proxy: an instruction that misses
the cache costs more than one that hits, and the commit's fsync is no instruction at all; the time
figures of bench/ingest_wrk.py remain the measure of the goal.

Each checkout runs in its own process under `valgrind --tool=callgrind --collect-atstart=no
--toggle-collect=functools_reduce`: the stores run inside a `functools.reduce` call (a C function whose
extent callgrind can toggle collection on), so imports, the schema's migrations and the parsing of the
bodies are not counted. The first batch (which creates the hosts' rows) is counted too. Workloads, on
reports from `bench.ingest.realistic_body` (what bench/ingest_wrk.py posts), --hosts a batch:
- churn: each host's next random report (random status, 1-5 drift items out of 40 tasks): items open and
  resolve all the time;
- steady: every host sends the same drifted report at every check (its drift repeated): the fleet's usual
  state between commits, where the review mostly counts sightings.

    .venv/bin/python bench/ingest_instructions.py --baseline DIR   # DIR: git archive REV agent bench tests

Needs valgrind (Debian package `valgrind`). Each checkout needs its `agent`, `bench` and `tests`.
About 90 s a workload and checkout on a 2-core VM (the two checkouts run at once).
"""

from __future__ import annotations

import argparse
import functools
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

# Run in the measured checkout's process (its agent, bench and tests first on sys.path).
CHILD = r'''
import functools, random, sys, tempfile
from datetime import timedelta
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from agent.collector import db, store
from agent.collector.payload import PayloadLimits, parse_report
from agent.report import Status
from bench.ingest import realistic_body
from tests.factory import BASE_TIME
from tests.live_collector import fresh_database

if not Path(store.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()):
    raise SystemExit(f"imported {store.__file__}, not the checkout's (an editable install first?)")
workload, hosts, batches = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
limits = PayloadLimits()
rngs = {i: random.Random(i) for i in range(hosts)}

def body(i):
    if workload == "churn":
        return realistic_body(f"host{i:05d}.bench", rngs[i], 5)[1]
    rng = random.Random(i * 7 + 1)  # the same drifted report every time (a new run_id each)
    while True:
        raw = realistic_body(f"host{i:05d}.bench", rng, 5)[1]
        if parse_report(raw, limits).status is Status.DRIFTED:
            return raw

work = []
for n in range(batches):
    at = BASE_TIME + timedelta(minutes=n)
    work.append([(parse_report(raw, limits), raw, at) for raw in (body(i) for i in range(hosts))])

def store_all(_a, _b):
    for batch in work:
        if store.ingest_group(engine, batch) != [True] * len(batch):
            raise SystemExit("a report was not stored")

with tempfile.TemporaryDirectory() as tmp, fresh_database("sqlite", Path(tmp)) as url:
    engine = db.create(url)
    db.prepare(engine)
    functools.reduce(store_all, [0, 1])  # callgrind counts inside functools_reduce only
    engine.dispose()
'''


def count(checkout: Path, workload: str, hosts: int, batches: int) -> int:
    """Instructions callgrind counted for the stores of one checkout; RuntimeError when the run failed."""
    with tempfile.TemporaryDirectory(prefix="gitops-bench-") as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=functools_reduce",
             f"--callgrind-out-file={tmp}/callgrind.out", sys.executable, "-c", CHILD, str(checkout),
             workload, str(hosts), str(batches)], capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or found is None:
        raise RuntimeError(f"{checkout} ({workload}) failed: {out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True,
                        help="another checkout (a directory with its agent, bench and tests)")
    parser.add_argument("--workload", choices=["churn", "steady", "both"], default="both")
    parser.add_argument("--hosts", type=int, default=50, help="reports a batch, one per host")
    parser.add_argument("--batches", type=int, default=6)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        parser.error("needs valgrind (Debian package valgrind)")
    for part in ("agent", "bench", "tests"):
        if not (args.baseline / part).is_dir():
            parser.error(f"--baseline {args.baseline}: no {part}/ (git archive REV agent bench tests | tar -x -C DIR)")
    if not (1 <= args.hosts <= 500 and 1 <= args.batches <= 50):
        parser.error("keep it bounded: hosts 1..500, batches 1..50")
    workloads = ["churn", "steady"] if args.workload == "both" else [args.workload]
    reports = args.hosts * args.batches
    print(f"sqlite: {args.batches} batches of {args.hosts} reports, instructions per report (callgrind)")
    print(f"{'workload':<8} {'baseline':>12} {'this checkout':>14} {'ratio':>6}")
    for workload in workloads:
        with ThreadPoolExecutor(2) as pool:
            old, new = pool.map(functools.partial(count, workload=workload, hosts=args.hosts,
                                                  batches=args.batches), [args.baseline, HERE])
        print(f"{workload:<8} {old / reports:>12,.0f} {new / reports:>14,.0f} {new / old:>6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
