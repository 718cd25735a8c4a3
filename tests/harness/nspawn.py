"""Boot a root filesystem under systemd-nspawn (real systemd as PID 1) to see packaged units run.

    with booted("agent1", lower=image_root, upper=host.upper, workdir=tmp_path / "boot",
                netns="ga-agent1") as machine:
        machine.wait_for_unit("gitops-agent.service")

The root is an overlay (lower = the extracted image, upper = e.g. a netns host's upper dir holding an
installed package), mounted in a private mount namespace that dies with nspawn. The container gets its own
cgroup directory (two containers in one cgroup collide), is not registered with machined (this machine
may not run systemd), and joins an existing network namespace when given one (no route out).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

_LAUNCH = r"""
set -eu
lower=$1 upper=$2 work=$3 merged=$4 cgroup=$5
shift 5
for hierarchy in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
  if [ -w "$hierarchy/cgroup.procs" ]; then
    mkdir -p "$hierarchy/$cgroup"
    echo $$ > "$hierarchy/$cgroup/cgroup.procs"
  fi
done
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged"
exec systemd-nspawn --quiet --keep-unit --register=no -D "$merged" "$@"
"""


@dataclass
class Machine:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def leader(self, timeout_s: float = 10) -> int:
        """PID of the container's systemd, seen from here (the child of nspawn)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(OSError):
                # self.process is nspawn itself (unshare and sh exec it); its child is PID 1 inside.
                for pid in children.read_text().split():
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no container process (log: {self.log.read_text(errors='replace')})")

    def run(self, *argv: str, check: bool = False, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = ["nsenter", "-t", str(self.leader()), "-a", "--", "/usr/bin/env", "-i",
               "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=check)

    def wait_booted(self, timeout_s: float = 60) -> str:
        """Wait until systemd finished starting up; returns 'running' or 'degraded'."""
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                state = self.run("systemctl", "is-system-running", timeout_s=10).stdout.strip()
                if state in ("running", "degraded"):
                    return state
            time.sleep(0.5)
        raise TimeoutError(f"{self.name}: systemd did not finish booting (state {state!r})")

    def unit_state(self, unit: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p",
                       "ActiveState,SubState,Result,ExecMainStatus,NRestarts,MainPID").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout

    def wait_for_unit(self, unit: str, timeout_s: float = 60) -> dict[str, str]:
        """Wait for ActiveState=active (for Type=notify: after READY=1); raise with the journal if not."""
        deadline = time.monotonic() + timeout_s
        state: dict[str, str] = {}
        while time.monotonic() < deadline:
            state = self.unit_state(unit)
            if state.get("ActiveState") == "active" and state.get("SubState") == "running":
                return state
            if state.get("ActiveState") == "failed":
                break
            time.sleep(0.5)
        raise AssertionError(f"{unit} did not become active: {state}\n--- journal\n{self.journal(unit)}")

    def poweroff(self, timeout_s: float = 30) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.run("systemctl", "poweroff", "--no-block", timeout_s=10)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextlib.contextmanager
def booted(name: str, *, lower: Path | Sequence[Path], upper: Path, workdir: Path, netns: str | None = None,
           extra_args: tuple[str, ...] = ()) -> Iterator[Machine]:
    work, merged = workdir / "work", workdir / "merged"
    for path in (upper, work, merged):
        path.mkdir(parents=True, exist_ok=True)
    args = [f"--machine={name}", "--boot", "--console=passive"]
    if netns:
        args.append(f"--network-namespace-path=/run/netns/{netns}")
    log = workdir / "nspawn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", _LAUNCH, "nspawn",
             str(lower) if isinstance(lower, Path) else ":".join(map(str, lower)), str(upper), str(work),
             str(merged), f"gitops-test-{name}", *args, *extra_args],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    machine = Machine(name, process, log)
    try:
        yield machine
    finally:
        machine.poweroff()
