"""No-drift check of a realistic generated role (default 60 tasks, bench/roles.py), side by side in one
invocation, alternating run by run:

  agent          `gitops-agent run --check` (its defaults: mitogen strategy, fact cache, inventory cache)
  agent-linear   the same with `ansible.strategy: linear` (what the agent costs without mitogen)
  ansible        `ansible-playbook --check --diff` of the same playbook, by hand
  ansible-pull   `ansible-pull --check --diff` from the same Git repo (clone/update + playbook)
  puppet         `puppet apply --noop` of a manifest with the same desired state (when puppet is installed)

    .venv/bin/python bench/cycle.py [--tasks 60] [--runs 3] [--workdir /tmp/gitops-bench]

Prints median wall and CPU seconds (CPU: user+sys of the command and every child) and ratios.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import BIN, Timing, median, print_table, timed
from roles import HOST, make_repo, puppet_manifest


def prepare(workdir: Path, tasks: int, *, pull: bool = True) -> dict[str, list[str]]:
    """The sandbox (converged once by the agent) and the command of each contender."""
    if workdir.exists():
        shutil.rmtree(workdir)
    repo = make_repo(workdir / "config-repo", tasks)
    root = workdir / "root"
    root.mkdir()
    base = f"host: {HOST}\nsource: {{url: config-repo}}\nstate_dir: state\nextra_vars: {{target_root: {root}}}\n"
    (workdir / "agent.yaml").write_text(base)
    (workdir / "agent-linear.yaml").write_text(base.replace("state_dir: state", "state_dir: state-linear")
                                               + "ansible: {strategy: linear}\n")
    timed([str(BIN / "gitops-agent"), "run", "--config", str(workdir / "agent.yaml")])  # converge
    extra = ["-e", f"target_root={root}", "-e", f"ansible_python_interpreter={BIN / 'python'}"]
    commands = {
        "agent": [str(BIN / "gitops-agent"), "run", "--check", "--config", str(workdir / "agent.yaml")],
        "agent-linear": [str(BIN / "gitops-agent"), "run", "--check", "--config",
                         str(workdir / "agent-linear.yaml")],
        "ansible": [str(BIN / "ansible-playbook"), "--check", "--diff", "-i", str(repo / "inventory"),
                    "--limit", HOST, "-c", "local", *extra, str(repo / "playbooks/bench.yml")],
        "ansible-pull": [str(BIN / "ansible-pull"), "-U", f"file://{repo}", "-C", "main",
                         "-d", str(workdir / "pull"), "--check", "--diff", "-i", "inventory", "--limit", HOST,
                         "-c", "local", *extra, "playbooks/bench.yml"],
    }
    # the first pull clones for real (in check mode the git step does not clone); the host is converged
    if pull:
        timed([a for a in commands["ansible-pull"] if a not in ("--check", "--diff")], cwd=workdir)
    puppet = shutil.which("puppet")
    if puppet:
        manifest = workdir / "bench.pp"
        manifest.write_text(puppet_manifest(tasks, root))
        commands["puppet"] = [puppet, "apply", "--noop", "--vardir", str(workdir / "puppet/var"),
                              "--confdir", str(workdir / "puppet/etc"), "--logdir", str(workdir / "puppet/log"),
                              str(manifest)]
    return commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gitops-bench"))
    parser.add_argument("--only", nargs="*", help="contenders to run (default: all)")
    args = parser.parse_args()
    commands = prepare(args.workdir, args.tasks)
    commands = {k: v for k, v in commands.items() if not args.only or k in args.only}
    results: dict[str, list[Timing]] = {name: [] for name in commands}
    for argv in commands.values():
        timed(argv, cwd=args.workdir)  # warm-up: the agent's fact and inventory caches, ansible-pull's clone
    for _ in range(args.runs):
        for name, argv in commands.items():
            results[name].append(timed(argv, cwd=args.workdir))
    print(f"no-drift check, {args.tasks}-task role, {args.runs} runs each (alternating), medians:")
    rows = {name: (median([r.wall_s for r in runs]), median([r.cpu_s for r in runs]))
            for name, runs in results.items()}
    print_table(rows, baselines=[b for b in ("ansible", "ansible-pull", "puppet") if b in rows])


if __name__ == "__main__":
    main()
