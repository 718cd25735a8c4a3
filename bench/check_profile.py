"""Where the seconds of one watch check go (issue 21's time to detect): a role-limited check of the
example repo (`make demo`'s sandbox, role base, /etc/motd edited by hand), run in this process so that
each step can be stamped, cold (this process pays the agent's imports, as a `gitops-agent run` child
does) and then warm (imports done, as a child forked by the warm-start helper, agent.zygote).

    .venv/bin/python bench/check_profile.py [--strategy mitogen|linear] [--runs 3] [--split-runs 3] [--workdir DIR]

Steps: the agent's imports; the cycle up to the Ansible run (configuration, lock, clean-up of earlier
runs, fetch, plan); then from ansible-runner's events (their `created` stamps): ansible-playbook's start
up to `playbook_on_start` (Python, Ansible's imports and plugins, the inventory, the playbook), up to the
first task's start (the strategy; with mitogen its connection process), each task, the end of the run
(stats -> ansible-runner returns); then the report and the rest of the cycle. Each line's "+" is the
time since the line before, so a "task start" line's is the previous task's (the first task's, with
mitogen, holds the start of the target's interpreter).

Then ansible-playbook's own start is split (each a new process with the last run's command's environment
and working directory, `--split-runs` times, medians): Python's start (`python -c pass`), the import of
ansible-playbook's code (`ansible.cli.playbook`; `-X importtime` splits it into ansible's own modules and
the libraries they import: jinja2, yaml, paramiko and cryptography, ...), `ansible-playbook --version`
(the imports and the configuration), and `--list-tasks` of the same playbooks with the same inventory
and extra vars (plus plugins, the inventory and the playbooks, no task run). `--split-runs 0` skips it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

T0 = time.monotonic()
W0 = time.time()


def stamp_of(event: dict[str, Any]) -> float | None:
    created = event.get("created")
    if not created:
        return None
    return datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp() - W0 + T0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", default="mitogen", choices=("mitogen", "linear"))
    parser.add_argument("--runs", type=int, default=3, help="warm runs after the cold one")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gitops-bench-check-profile"))
    parser.add_argument("--split-runs", type=int, default=3, help="times each part of ansible-playbook's start")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent
    if not (args.workdir / "agent.yaml").exists():  # the sandbox, converged once (a child process)
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(here)!r}); "
                        f"from common import sandbox; from pathlib import Path; sandbox(Path({str(args.workdir)!r}))"],
                       check=True)
    config = args.workdir / "agent.yaml"
    text = "".join(x for x in config.read_text().splitlines(keepends=True) if not x.startswith("ansible:"))
    config.write_text(text + f"ansible: {{strategy: {args.strategy}}}\n")
    print(f"load: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; ansible.strategy {args.strategy}")
    started = time.monotonic()  # (the sandbox is made before: not part of the cold run)
    marks: list[tuple[float, str]] = [(started, "cold run started (Python's own start, ~0.1 s, not counted)")]
    cli = importlib.import_module("agent.cli")
    ansible_runner = importlib.import_module("ansible_runner")
    for name in ("agent.cli_cycle", "agent.cycle", "agent.wiring", "agent.delivery", "httpx"):
        importlib.import_module(name)
    marks.append((time.monotonic(), "the agent's imports"))
    run = ansible_runner.run
    captured: dict[str, Any] = {}

    def stamped_run(**kwargs: Any) -> Any:
        marks.append((time.monotonic(), "cycle: configuration, lock, clean-up, fetch, plan"))
        captured.update(kwargs)
        keep = args.workdir / "extravars-of-last-run.json"  # the private dir is removed after the run
        shutil.copyfile(Path(kwargs["private_data_dir"]) / "extravars.json", keep)
        captured["extravars"] = keep
        handler = kwargs["event_handler"]

        def on_event(event: dict[str, Any]) -> bool:
            when = stamp_of(event)
            name = str(event.get("event"))
            if when is not None and name in ("playbook_on_start", "playbook_on_task_start", "playbook_on_stats"):
                task = event.get("event_data", {}).get("task", "")
                marks.append((when, {"playbook_on_start": "ansible-playbook started, playbook loaded",
                                     "playbook_on_stats": "last task done"}.get(name, f"task start: {task}")))
            return bool(handler(event))

        result = run(**{**kwargs, "event_handler": on_event})
        marks.append((time.monotonic(), "ansible-runner returned (ansible-playbook ended)"))
        return result

    ansible_runner.run = stamped_run
    motd = args.workdir / "root/etc/motd"
    os.chdir(args.workdir)
    for n in range(1 + args.runs):
        motd.write_text(f"edited by hand {n}\n")
        begin = time.monotonic()
        if n:
            marks[:] = [(begin, "warm run started")]
        cli.main(["run", "--config", str(config), "--trigger", "watch", "--roles", "base", "--check"])
        marks.append((time.monotonic(), "report written and delivered: the cycle returned"))
        print(f"\n{'cold' if n == 0 else 'warm'} run {n}: {time.monotonic() - marks[0][0]:.2f}s")
        previous = marks[0][0]
        for when, what in sorted(marks):
            print(f"  {when - marks[0][0]:7.2f}  (+{when - previous:5.2f})  {what}")
            previous = when
    if args.split_runs > 0 and captured:
        split_start(captured, args.split_runs)


def _timed(argv: list[str], env: dict[str, str], cwd: str) -> tuple[float, float, str]:
    """Wall and CPU seconds (the process and its children) of one run, and its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, proc.stderr


def _import_split(stderr: str) -> dict[str, float]:
    """Self time (s) of `-X importtime`'s lines, summed by top-level package."""
    sums: dict[str, float] = {}
    for line in stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[0].split(":")[1].strip().isdigit():
            continue
        top = parts[2].strip().split(".")[0]
        sums[top] = sums.get(top, 0.0) + int(parts[0].split(":")[1]) / 1e6
    return sums


def split_start(kwargs: dict[str, Any], runs: int) -> None:
    """ansible-playbook's start in parts, with the environment and working directory of the last run."""
    argv = shlex.split(kwargs["cmdline"])
    playbook_cmd = argv[argv.index("--") + 1:]  # after agent.noninteractive's own arguments
    tool, options = playbook_cmd[0], playbook_cmd[1:]
    options = [o for o in options if o not in ("--check", "--diff")]
    options[options.index("-e") + 1] = f"@{kwargs['extravars']}"
    env = {**os.environ, **kwargs["envvars"]}
    for name in ("ANSIBLE_HOST_KEY_CHECKING", "ANSIBLE_RETRY_FILES_ENABLED", "ORIGINAL_STDOUT_CALLBACK"):
        env.pop(name, None)
    cwd = kwargs["project_dir"]
    python = str(Path(tool).parent / "python")
    steps = {
        "Python's start (python -c pass)": [python, "-c", "pass"],
        "import ansible.cli.playbook": [python, "-c", "import ansible.cli.playbook"],
        "ansible-playbook --version (imports, configuration)": [tool, "--version"],
        "ansible-playbook --list-tasks (+ plugins, inventory, playbooks)": [tool, "--list-tasks", *options],
    }
    print(f"\nansible-playbook's start, split (median of {runs}; load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}):")
    for what, command in steps.items():
        timings = [_timed(command, env, cwd) for _ in range(runs)]
        print(f"  {statistics.median(t[0] for t in timings):6.2f} s wall "
              f"{statistics.median(t[1] for t in timings):6.2f} CPU-s  {what}")
    sums: list[dict[str, float]] = [_import_split(_timed([python, "-X", "importtime", "-c",
                                                          "import ansible.cli.playbook"], env, cwd)[2])
                                    for _ in range(runs)]
    names = sorted({n for s in sums for n in s}, key=lambda n: -statistics.median(s.get(n, 0.0) for s in sums))
    print("  import ansible.cli.playbook by top-level package (-X importtime self times, median, s):")
    print("    " + ", ".join(f"{n} {statistics.median(s.get(n, 0.0) for s in sums):.2f}" for n in names[:10])
          + f"; all others {statistics.median(sum(s.get(n, 0.0) for n in names[10:]) for s in sums):.2f}")


if __name__ == "__main__":
    main()
