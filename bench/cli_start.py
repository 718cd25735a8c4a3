"""Start-up cost of `gitops-collector` and `gitops-agent` commands, this checkout against another.

Each command runs in a fresh interpreter (`python -c "...main()" ARGS`, what the console scripts do) with
PYTHONPATH on the checkout, this checkout's and --baseline's alternating, --rounds times; prints the
median wall and CPU (user+sys) of each and their ratio (this / baseline; lower is better), with `uptime`
before and after. The commands: `--help`, a subcommand's `--help`, `token list`, `drift list` and
`migrate` on a fresh SQLite database (at the head revision), `hosts` against a closed port (exit 69: the
query path up to the connection), and `gitops-agent --help` and `version`.

    git archive main agent | tar -x -C /tmp/old
    .venv/bin/python bench/cli_start.py --baseline /tmp/old
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, timed

MAIN = {"gitops-collector": "import sys; sys.argv[0] = 'gitops-collector'; "
                            "from agent.collector.cli import main; sys.exit(main())",
        "gitops-agent": "import sys; sys.argv[0] = 'gitops-agent'; from agent.cli import main; sys.exit(main())"}


def commands(db: str) -> list[tuple[str, list[str], tuple[int, ...]]]:
    """(label, argv, accepted exit codes)."""
    return [
        ("collector --help", ["gitops-collector", "--help"], (0,)),
        ("collector serve --help", ["gitops-collector", "serve", "--help"], (0,)),
        ("collector token list", ["gitops-collector", "token", "list", "--db", db], (0,)),
        ("collector drift list", ["gitops-collector", "drift", "list", "--db", db], (0,)),
        ("collector migrate", ["gitops-collector", "migrate", "--db", db], (0,)),
        ("collector hosts (no server)", ["gitops-collector", "hosts", "--url", "http://127.0.0.1:9"], (69,)),
        ("agent --help", ["gitops-agent", "--help"], (0,)),
        ("agent version", ["gitops-agent", "version"], (0,)),
    ]


def which_agent(code: Path) -> str:
    """The `agent` package a child on `code` imports (to be sure the baseline is the baseline)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.run([sys.executable, "-c", "import agent; print(agent.__file__)"], env=env, cwd=code,
                          capture_output=True, text=True, check=True).stdout.strip()


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, metavar="DIR", required=True,
                        help="a directory holding another checkout's `agent` package")
    parser.add_argument("--rounds", type=int, default=7, help="runs of each command and checkout, alternating")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 50:
        parser.error("--rounds: 1..50")
    if not (args.baseline / "agent" / "collector" / "cli.py").is_file():
        parser.error(f"--baseline {args.baseline}: no agent/collector/cli.py in it")
    checkouts = {"this": ROOT, "baseline": args.baseline.resolve()}
    for name, code in checkouts.items():
        found = which_agent(code)
        if not found.startswith(str(code)):
            raise SystemExit(f"{name}: a child imports {found}, not the checkout in {code}")
    print(f"before: {uptime()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cli-start-") as tmp:
        db = f"sqlite:///{tmp}/collector.db"
        subprocess.run([sys.executable, "-c", MAIN["gitops-collector"], "migrate", "--db", db], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
        env = {"GITOPS_COLLECTOR_TOKEN": "bench", "COLUMNS": "100"}
        print(f"{'command':<30} {'wall this':>9} {'baseline':>9} {'ratio':>6}   {'CPU this':>9} "
              f"{'baseline':>9} {'ratio':>6}")
        for label, argv, ok in commands(db):
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in checkouts}
            for _ in range(args.rounds):
                for name, code in checkouts.items():
                    t = timed([sys.executable, "-c", MAIN[argv[0]], *argv[1:]], ok=ok, cwd=code,
                              env={**env, "PYTHONPATH": str(code)})
                    runs[name].append((t.wall_s, t.cpu_s))
            wall = {n: statistics.median(w for w, _ in r) for n, r in runs.items()}
            cpu = {n: statistics.median(c for _, c in r) for n, r in runs.items()}
            print(f"{label:<30} {wall['this']:8.3f}s {wall['baseline']:8.3f}s {wall['this'] / wall['baseline']:6.2f}"
                  f"   {cpu['this']:8.3f}s {cpu['baseline']:8.3f}s {cpu['this'] / cpu['baseline']:6.2f}", flush=True)
    print(f"after: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
