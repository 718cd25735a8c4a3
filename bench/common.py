"""Helpers for the benchmarks: a sandbox like `make demo`'s, and timing of whole commands."""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Timing:
    wall_s: float
    cpu_s: float


def timed(argv: list[str], *, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,),
          cwd: Path | None = None) -> Timing:
    """Wall and CPU (user+sys of the command and all its children) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **(env or {})}, check=False, cwd=cwd)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in ok:
        raise SystemExit(f"{argv[0]} exited {proc.returncode}: {proc.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu)


def median(values: list[float]) -> float:
    return statistics.median(values)


def sandbox(workdir: Path, host: str = "web01.example.com") -> Path:
    """A config repo from playbooks/ and inventory/, an agent.yaml, already converged once."""
    if workdir.exists():
        shutil.rmtree(workdir)
    repo = workdir / "config-repo"
    repo.mkdir(parents=True)
    for name in ("playbooks", "inventory"):
        shutil.copytree(ROOT / name, repo / name)
    git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench"], check=True)
    (workdir / "root").mkdir()
    config = workdir / "agent.yaml"
    config.write_text(f"host: {host}\nsource: {{url: config-repo}}\nstate_dir: state\n"
                      f"extra_vars: {{target_root: {workdir / 'root'}}}\n")
    subprocess.run([str(BIN / "gitops-agent"), "run", "--config", str(config)], check=True,
                   stdout=subprocess.DEVNULL)
    return config


def print_table(rows: dict[str, tuple[float, float]], *, baselines: list[str]) -> None:
    """rows: name -> (wall_s, cpu_s); prints each with its ratios to every baseline (lower is better)."""
    for name, (wall, cpu) in rows.items():
        ratios = "  ".join(f"/{b}: wall {wall / rows[b][0]:.3f} cpu {cpu / rows[b][1]:.3f}"
                           for b in baselines if b != name)
        print(f"  {name:<13} wall {wall:7.2f}s  cpu {cpu:7.2f}s   {ratios}")
