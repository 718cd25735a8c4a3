"""What the agent pays to encode and cap an oversized report (agent.report.to_json, agent.report_size.fit).

An agent whose host drifts everywhere sends one report with thousands of drift items; `fit` trims it under
the collector's body limit before it enters the outbox. This builds such reports (--items drift items of a
--diff-chars diff each, and a report of 4,000 error messages of 2 kB), then prints the CPU seconds
(`time.process_time`, best of --repeat) of `to_json` and `fit` on each. With --baseline DIR (a tree made by
`git archive <commit> agent bench tests | tar -x -C DIR`), the same run of that tree follows in its own
process, and the two are printed side by side with their ratio (new / old).

    .venv/bin/python bench/report_fit.py --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the tree under test (cwd and PYTHONPATH): prints one JSON object.
CHILD = r"""
import json, sys, time
from agent import report_size
from agent.report import Diff, DriftItem, DriftKind, ErrorItem, Phase, Status, to_json
from tests.factory import make_report
items, chars, repeat = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
drift = make_report("bench-host", status=Status.CORRECTED, drift=tuple(
    DriftItem(play="App", task=f"file {i}", role="app", module="ansible.builtin.copy", kind=DriftKind.CORRECTIVE,
              diffs=(Diff(f"/etc/app/f{i}.conf", "a" * chars, "b" * chars),)) for i in range(items)))
errors = make_report("bench-host", status=Status.ERROR,
                     errors=tuple(ErrorItem(Phase.CHECK, "x" * 2000) for _ in range(4000)))

def best(call):
    times = []
    for _ in range(repeat):
        started = time.process_time()
        call()
        times.append(time.process_time() - started)
    return min(times)

out = {}
for name, report in (("drift", drift), ("errors", errors)):
    out[name] = {"bytes": len(to_json(report).encode()), "kept": None,
                 "to_json_s": best(lambda: to_json(report)), "fit_s": best(lambda: report_size.fit(report))}
    fitted = report_size.fit(report)
    out[name]["kept"] = len(fitted.drift) if name == "drift" else len(fitted.errors)
print(json.dumps(out))
"""


def run(tree: Path, args: argparse.Namespace, label: str) -> dict[str, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(args.items), str(args.diff_chars), str(args.repeat)],
                          cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{label} ({tree}): failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    result: dict[str, dict[str, float]] = json.loads(done.stdout)
    for name, row in result.items():
        print(f"  {label:<4} {name:<7} {row['bytes'] / 1e6:5.1f} MB: to_json {row['to_json_s']:.2f} s CPU, fit "
              f"{row['fit_s']:.2f} s, {row['kept']:,} kept", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000, help="drift items in the drift report (20,000)")
    parser.add_argument("--diff-chars", type=int, default=100, help="characters on each side of a diff (100)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is printed (3)")
    parser.add_argument("--baseline", type=Path, help="an older tree to run the same way, after this one")
    args = parser.parse_args()
    if not (1 <= args.items <= 200_000 and 0 <= args.diff_chars <= 1_000_000 and 1 <= args.repeat <= 20):
        parser.error("keep it bounded: 1 <= items <= 200,000, diff-chars <= 1,000,000, 1 <= repeat <= 20")
    if args.baseline is not None and not (args.baseline / "agent" / "report_size.py").is_file():
        parser.error(f"--baseline {args.baseline}: not a tree with agent/report_size.py")
    print(f"CPU seconds, best of {args.repeat}", flush=True)
    new = run(ROOT, args, "new")
    if args.baseline is None:
        return 0
    old = run(args.baseline.resolve(), args, "old")
    print("side by side (old -> new, ratio new/old):")
    for name, n in new.items():
        o = old[name]
        print(f"  {name:<7} to_json {o['to_json_s']:.2f} -> {n['to_json_s']:.2f} s "
              f"({n['to_json_s'] / o['to_json_s']:.2f}), fit {o['fit_s']:.2f} -> {n['fit_s']:.2f} s "
              f"({n['fit_s'] / o['fit_s']:.2f}), kept {o['kept']:,} -> {n['kept']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
