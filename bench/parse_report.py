"""CPU per report of the collector's body parsing (`payload.parse_report`), this checkout against another.

The part of ingest a change to the decoder moves, measured alone so that a loaded machine's noise (which
swamps it in `bench/ingest_wrk.py`) is smaller: the same reports `bench/ingest_wrk.py` posts (--hosts
hosts, `bench.ingest.realistic_body`), parsed --loops times each, in a fresh process per measurement,
this checkout's and --baseline's alternating. Prints CPU microseconds per report (process time) of each
measurement and the medians.

    .venv/bin/python bench/parse_report.py --baseline /tmp/old     # `git archive main agent | tar -x -C /tmp/old`
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time, random
from agent.collector.payload import PayloadLimits, parse_report  # first: the checkout on PYTHONPATH
sys.path.append({root!r})
from bench.ingest import realistic_body
hosts, loops = {hosts}, {loops}
bodies = [realistic_body(h, random.Random(h), 5)[1] for h in (f"host{{i:05d}}.bench" for i in range(hosts))]
bodies = [b.encode() if isinstance(b, str) else b for b in bodies]
limits = PayloadLimits()
for b in bodies:
    parse_report(b, limits)
started = time.process_time()
for _ in range(loops):
    for b in bodies:
        parse_report(b, limits)
print((time.process_time() - started) / (loops * hosts) * 1e6)
"""


def measure(code: Path, hosts: int, loops: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), hosts=hosts, loops=loops)],
                         env=env, cwd=code, capture_output=True, text=True, check=True, timeout=600).stdout
    return float(out.split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, metavar="DIR", required=True,
                        help="a directory holding another checkout's `agent` package")
    parser.add_argument("--hosts", type=int, default=50, help="distinct reports (one per host)")
    parser.add_argument("--loops", type=int, default=40, help="times each report is parsed per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each, alternating")
    args = parser.parse_args()
    if not (1 <= args.hosts <= 1000 and 1 <= args.loops <= 1000 and 1 <= args.rounds <= 20):
        parser.error("keep it bounded: hosts 1..1000, loops 1..1000, rounds 1..20")
    results: dict[str, list[float]] = {"this checkout": [], "baseline": []}
    for _ in range(args.rounds):
        for name, code in (("this checkout", ROOT), ("baseline", args.baseline.resolve())):
            results[name].append(measure(code, args.hosts, args.loops))
            print(f"{name:<14} parse_report {results[name][-1]:8.1f} us CPU per report", flush=True)
    new, old = statistics.median(results["this checkout"]), statistics.median(results["baseline"])
    print(f"\nmedian: this checkout {new:.1f} us, baseline {old:.1f} us per report: ratio {new / old:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
