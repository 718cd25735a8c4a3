"""Scaling: no-drift check CPU and wall for 10, 60 and 200 tasks, agent against plain ansible-playbook,
and the marginal cost per task (the slope between the smallest and the largest role).

    .venv/bin/python bench/scaling.py [--sizes 10 60 200] [--runs 1] [--workdir /tmp/gitops-bench-scale]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import Timing, median, timed
from cycle import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 60, 200])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gitops-bench-scale"))
    args = parser.parse_args()
    cpu: dict[tuple[str, int], float] = {}
    print(f"no-drift check by role size, {args.runs} run(s) each on a converged host, medians:")
    print(f"  {'tasks':>5} {'agent wall':>11} {'agent cpu':>10} {'ansible wall':>13} {'ansible cpu':>12} "
          f"{'cpu ratio':>9} {'agent cpu/task':>15} {'ansible cpu/task':>17}")
    for size in args.sizes:
        commands = prepare(args.workdir / str(size), size, pull=False)  # converged: agent caches warm
        runs: dict[str, list[Timing]] = {"agent": [], "ansible": []}
        for _ in range(args.runs):
            for name in runs:
                runs[name].append(timed(commands[name], cwd=args.workdir / str(size)))
        (aw, ac), (pw, pc) = ((median([t.wall_s for t in runs[n]]), median([t.cpu_s for t in runs[n]]))
                              for n in ("agent", "ansible"))
        cpu[("agent", size)], cpu[("ansible", size)] = ac, pc
        print(f"  {size:>5} {aw:>10.2f}s {ac:>9.2f}s {pw:>12.2f}s {pc:>11.2f}s {ac / pc:>9.2f} "
              f"{ac / size:>14.3f}s {pc / size:>16.3f}s")
    lo, hi = min(args.sizes), max(args.sizes)
    if hi > lo:
        for name in ("agent", "ansible"):
            slope = (cpu[(name, hi)] - cpu[(name, lo)]) / (hi - lo)
            print(f"  marginal cost per task, {name}: {slope:.3f} CPU-s")


if __name__ == "__main__":
    main()
