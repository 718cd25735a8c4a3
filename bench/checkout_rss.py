"""Peak memory of a checkout of a big repository: one file of --size-mb MiB (default 1024, incompressible)
plus a few small ones, checked out by `GitSource.sync()` into a fresh state_dir, in a fresh process.

Prints the agent process's peak RSS (what counts against the unit's MemoryHigh), the largest git child's
(ls-tree and cat-file for the checkout; the fetch before it is measured apart, in its own process). With --compare, the same tree exported the old way (`git archive` output held
in memory, then tarfile) in another fresh process, for reference.

    .venv/bin/python bench/checkout_rss.py [--size-mb 1024] [--compare] [--workdir /tmp/gitops-bench-rss]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]

MEASURE = """
import json, resource, sys, time
from pathlib import Path
import git
from agent.config import SourceConfig
from agent.source import GitSource
config = SourceConfig(url=sys.argv[1], mirrors=(), ref="main", verify="none", trusted_keys=None,
                      allow_rewind=False, depth=1, keep_releases=1, timeout_s=3600.0)
source = GitSource(config, Path(sys.argv[2]))
repo = source._repo()
started = time.monotonic()
if sys.argv[3] == "fetch":  # git's work (fetch, index-pack): its own processes
    source._fetch(repo, sys.argv[1])
    size = 0
else:  # the checkout: this process, git ls-tree and git cat-file
    path = source._export(repo, repo.git.rev_parse("refs/gitops/fetched"))
    repo.git.clear_cache()  # ends the persistent cat-file, so that its usage is counted below
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
print(json.dumps({"self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "wall_s": time.monotonic() - started, "bytes": size}))
"""

OLD_WAY = """
import json, resource, sys, tarfile, time
from io import BytesIO
import git
started = time.monotonic()
repo = git.Repo(sys.argv[1])
data = repo.git.execute(["git", "archive", "--format=tar", "main"], stdout_as_string=False)
with tarfile.open(fileobj=BytesIO(data)) as tar:
    tar.extractall(sys.argv[2], filter="data")
print(json.dumps({"self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "wall_s": time.monotonic() - started, "bytes": len(data)}))
"""


def make_repo(repo: Path, size_mb: int) -> None:
    repo.mkdir(parents=True)
    subprocess.run([*GIT, "-C", str(repo), "init", "-q", "-b", "main"], check=True)
    big = repo.parent / "big.bin"
    with big.open("wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1024 * 1024))
    blob = subprocess.run([*GIT, "-C", str(repo), "hash-object", "-w", str(big)], check=True,
                          capture_output=True, text=True).stdout.strip()
    big.unlink()
    small = subprocess.run([*GIT, "-C", str(repo), "hash-object", "-w", "--stdin"], input="- hosts: all\n",
                           check=True, capture_output=True, text=True).stdout.strip()
    listing = f"100644 blob {blob}\tbig.bin\n100644 blob {small}\tsite.yml\n"
    tree = subprocess.run([*GIT, "-C", str(repo), "mktree"], input=listing, check=True, capture_output=True,
                          text=True).stdout.strip()
    commit = subprocess.run([*GIT, "-C", str(repo), "commit-tree", tree, "-m", "big"], check=True,
                            capture_output=True, text=True).stdout.strip()
    subprocess.run([*GIT, "-C", str(repo), "update-ref", "refs/heads/main", commit], check=True)


def measure(script: str, *args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", script, *args], check=True, capture_output=True, text=True,
                         cwd=ROOT).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--compare", action="store_true", help="also the old git archive + tarfile way")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gitops-bench-rss"))
    args = parser.parse_args()
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    started = time.monotonic()
    make_repo(args.workdir / "origin", args.size_mb)
    print(f"repository with a {args.size_mb} MiB file made in {time.monotonic() - started:.0f}s")
    origin, state = str(args.workdir / "origin"), str(args.workdir / "state")
    rows = [("agent: the fetch before the checkout (git)", measure(MEASURE, origin, state, "fetch")),
            ("agent checkout (ls-tree + streamed cat-file)", measure(MEASURE, origin, state, "export"))]
    shutil.rmtree(args.workdir / "state")
    if args.compare:
        (args.workdir / "old").mkdir()
        rows.append(("old: git archive in memory + tarfile",
                     measure(OLD_WAY, str(args.workdir / "origin"), str(args.workdir / "old"))))
    print("\n| what | checked out | agent process peak RSS | largest git child peak RSS | wall |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in rows:
        print(f"| {name} | {r['bytes'] / 2**20:.0f} MiB | {r['self_kb'] / 1024:.0f} MiB | "
              f"{r['children_kb'] / 1024:.0f} MiB | {r['wall_s']:.1f} s |")
    shutil.rmtree(args.workdir)


if __name__ == "__main__":
    main()
