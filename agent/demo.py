"""`make demo`: the whole loop on this machine, in a sandbox folder, with no server and no root.

1. makes a Git repository from the project's playbooks/ and inventory/ (the example config repo);
2. writes an agent.yaml for host web01.example.com whose target_root is demo/root, so every managed
   path lands under demo/ (the same agent code path as production: only the root differs);
3. runs `gitops-agent run`: the first apply (intentional drift, corrected);
4. edits a managed file by hand and runs again: corrective drift, shown as a diff, corrected;
5. shows `gitops-agent status`.
The agent is run as a separate process, exactly as an operator would run it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HOST = "web01.example.com"
MANAGED = "etc/motd"


def say(text: str) -> None:
    print(f"\n\x1b[1m== {text}\x1b[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def agent(workdir: Path, *args: str, ok: tuple[int, ...] = (0,)) -> int:
    print(f"$ gitops-agent {' '.join(args)} --config {workdir / 'agent.yaml'}", flush=True)
    result = subprocess.run([sys.executable, "-m", "agent.cli", *args, "--config",
                             str(workdir / "agent.yaml")], check=False)
    if result.returncode not in ok:
        raise SystemExit(f"demo: gitops-agent {args[0]} exited with {result.returncode}")
    return result.returncode


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=Demo Operator",
                    "-c", "user.email=ops@example.com", *args], check=True, stdout=subprocess.DEVNULL)


def make_config_repo(project: Path, repo: Path) -> None:
    repo.mkdir(parents=True)
    for name in ("playbooks", "inventory"):
        shutil.copytree(project / name, repo / name)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Example fleet configuration")


def write_config(workdir: Path) -> None:
    root = workdir / "root"
    root.mkdir()
    (workdir / "agent.yaml").write_text(
        f"# Written by `make demo`. Paths are relative to this file.\n"
        f"host: {HOST}\n"
        f"source:\n  url: config-repo\n  ref: main\n"
        f"mode: enforce\n"
        f"state_dir: state\n"
        f"extra_vars:\n  target_root: {root}\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="checkout with playbooks/")
    parser.add_argument("--workdir", type=Path, default=Path("demo"), help="sandbox (recreated)")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    say(f"Config repo: {workdir / 'config-repo'} (from {args.project.resolve()}/playbooks, inventory)")
    make_config_repo(args.project.resolve(), workdir / "config-repo")
    write_config(workdir)
    print((workdir / "agent.yaml").read_text(encoding="utf-8"))
    say("First run: everything is new (intentional drift), so the agent applies and rechecks")
    agent(workdir, "run")
    managed = workdir / "root" / MANAGED
    say(f"Someone edits {managed} by hand")
    with managed.open("a", encoding="utf-8") as f:
        f.write("maintenance tonight -- bob\n")
    print(managed.read_text(encoding="utf-8"))
    say("Next run: corrective drift (the host changed, not Git), reverted")
    agent(workdir, "run")
    say("The drift that run found, as a diff")
    agent(workdir, "diff")
    say("Status")
    agent(workdir, "status")
    print(f"\nThe file is back to what Git says:\n{managed.read_text(encoding='utf-8')}")
    if not os.environ.get("DEMO_NO_SERVE"):
        print("(no collector in this demo yet: reports are in demo/state/last_run.json and history/)")


if __name__ == "__main__":
    main()
