"""No-drift check cycle: `gitops-agent run --check` against plain `ansible-playbook --check --diff` of
the same playbooks, on the example repo, run alternately in one invocation.

    .venv/bin/python bench/cycle.py [--runs 5] [--workdir /tmp/gitops-bench]

Prints the median wall and CPU seconds of each and the ratios agent/ansible (lower is better).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import BIN, median, sandbox, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gitops-bench"))
    args = parser.parse_args()
    config = sandbox(args.workdir)
    repo = args.workdir / "config-repo"
    agent = [str(BIN / "gitops-agent"), "run", "--check", "--config", str(config)]
    ansible = [str(BIN / "ansible-playbook"), "--check", "--diff", "-i", str(repo / "inventory"),
               "--limit", "web01.example.com", "-c", "local", "-e", f"target_root={args.workdir / 'root'}",
               "-e", f"ansible_python_interpreter={BIN / 'python'}",
               str(repo / "playbooks/base.yml"), str(repo / "playbooks/web.yml")]
    results: dict[str, list] = {"agent": [], "ansible": []}
    timed(agent), timed(ansible)  # warm-up
    for _ in range(args.runs):
        results["agent"].append(timed(agent))
        results["ansible"].append(timed(ansible))
    print(f"no-drift check of the example repo (roles base, web), {args.runs} runs each, alternating")
    rows = {}
    for name, runs in results.items():
        rows[name] = (median([r.wall_s for r in runs]), median([r.cpu_s for r in runs]))
        print(f"  {name:<8} wall {rows[name][0]:6.2f}s   cpu {rows[name][1]:6.2f}s")
    print(f"  ratio agent/ansible: wall {rows['agent'][0] / rows['ansible'][0]:.2f}   "
          f"cpu {rows['agent'][1] / rows['ansible'][1]:.2f}")


if __name__ == "__main__":
    main()
