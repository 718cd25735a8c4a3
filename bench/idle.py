"""Idle footprint of `gitops-agent daemon`: RSS and CPU per hour while nothing changes, with the default
poll of 1 minute shortened to --poll to show its cost, and the peak RSS of the daemon during a cycle.

    .venv/bin/python bench/idle.py [--seconds 60] [--poll 5s]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from common import BIN, sandbox


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, and the reaped children's (git ls-remote probes): fields 14-17 of proc(5)
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--poll", default="5s")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gitops-bench-idle"))
    args = parser.parse_args()
    config = sandbox(args.workdir)
    with config.open("a") as f:
        f.write(f"schedule: {{interval: 1h, poll: {args.poll}, splay: 0s}}\n")
    last_run = args.workdir / "state/last_run.json"
    before = json.loads(last_run.read_text())["run_id"]
    proc = subprocess.Popen([str(BIN / "gitops-agent"), "daemon", "--config", str(config)],
                            stderr=subprocess.DEVNULL)
    peak = 0.0
    try:
        time.sleep(3)  # started, first probe done: same commit, so no cycle
        assert json.loads(last_run.read_text())["run_id"] == before, "an idle daemon ran a cycle"
        start_cpu, started = cpu_s(proc.pid), time.monotonic()
        samples = []
        while time.monotonic() - started < args.seconds:
            samples.append(rss_mb(proc.pid))
            time.sleep(1)
        used = cpu_s(proc.pid) - start_cpu
        elapsed = time.monotonic() - started
        os.kill(proc.pid, signal.SIGUSR1)  # no request file: wakes it; then a real cycle via `run`
        runner = subprocess.Popen([str(BIN / "gitops-agent"), "run", "--check", "--config", str(config)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while runner.poll() is None:
            peak = max(peak, rss_mb(proc.pid))
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    print(f"idle daemon over {elapsed:.0f}s with poll {args.poll}:")
    print(f"  RSS {max(samples):.1f} MB (max), CPU {used:.2f}s = {used / elapsed * 3600:.1f} CPU-s per hour")
    print(f"  daemon RSS during a cycle (Ansible runs in a child): {peak:.1f} MB peak")


if __name__ == "__main__":
    main()
