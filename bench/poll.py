"""Poll cost on an unchanged repo: the agent's "anything new?" probe against `ansible-pull
--only-if-changed` (-o), which runs Ansible's git module to find out.

  probe (daemon)   GitSource.probe() as the daemon calls it, in its own process: one `git ls-remote`
  probe (process)  the same from a fresh `python -c` process (interpreter start-up included)
  ansible-pull -o  `ansible-pull -o -U file://REPO -C main ...` on an already cloned, unchanged repo

    .venv/bin/python bench/poll.py [--runs 20] [--workdir /tmp/gitops-bench-poll]

Also prints what a cycle's GitSource.sync() costs when the commit has not changed (fetch, no checkout).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import time
from pathlib import Path

from common import BIN, ROOT, Timing, median, print_table, sandbox, timed

from agent.config import load
from agent.source import GitSource


def in_process(config: Path, runs: int, *, sync: bool = False) -> list[Timing]:
    """GitSource.probe() (or, with sync, a whole fetch of the unchanged ref) inside this process."""
    source = GitSource(load(config).source, load(config).state_dir)
    last = json.loads((load(config).state_dir / "state.json").read_text())["last_commit"]
    out = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        assert source.sync(last_commit=last).commit == last if sync else source.probe()
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = sum(a.ru_utime - b.ru_utime + a.ru_stime - b.ru_stime for a, b in zip(after, before, strict=True))
        out.append(Timing(wall, cpu))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gitops-bench-poll"))
    args = parser.parse_args()
    config = sandbox(args.workdir)
    repo = args.workdir / "config-repo"
    script = ("import sys; from agent.config import load; from agent.source import GitSource; "
              f"c = load(__import__('pathlib').Path({str(config)!r})); "
              "sys.exit(0 if GitSource(c.source, c.state_dir).probe() else 1)")
    process = [str(BIN / "python"), "-c", script]
    pull = [str(BIN / "ansible-pull"), "-o", "-U", f"file://{repo}", "-C", "main", "-d", str(args.workdir / "pull"),
            "-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={BIN / 'python'}",
            "playbooks/base.yml"]
    shutil.rmtree(args.workdir / "pull", ignore_errors=True)
    subprocess.run([*pull[:1], *pull[2:]], check=False, capture_output=True, cwd=ROOT)  # clone; no host matches
    results: dict[str, list[Timing]] = {"probe (daemon)": [], "probe (process)": [], "ansible-pull -o": []}
    for _ in range(args.runs):
        results["probe (daemon)"] += in_process(config, 1)
        results["probe (process)"].append(timed(process))
        results["ansible-pull -o"].append(timed(pull))
    print(f"poll of an unchanged repo, {args.runs} runs each (alternating), medians:")
    print_table({k: (median([r.wall_s for r in v]), median([r.cpu_s for r in v])) for k, v in results.items()},
                baselines=["ansible-pull -o"])
    sync = in_process(config, args.runs, sync=True)
    print(f"  a cycle's source sync of the unchanged commit (shallow fetch of the ref, no re-checkout): "
          f"wall {median([t.wall_s for t in sync]):.3f}s  cpu {median([t.cpu_s for t in sync]):.3f}s")


if __name__ == "__main__":
    main()
