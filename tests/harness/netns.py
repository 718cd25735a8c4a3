"""Isolated test hosts without Docker: network namespace + veth on a private bridge, and UTS, IPC, mount and
PID namespaces around an overlay of the cached image, with tini as PID 1 running sshd.

    with Bridge("gatest0", "10.213.0.1/24") as bridge:
        host = Host.start("h1", lower=root, workdir=tmp_path / "h1", bridge=bridge, address="10.213.0.11")
        host.run("apt-get", "install", "-y", "gitops-agent")
        host.stop()

The bridge has no uplink and hosts get no default route: the only thing a host can reach is the bridge
address in the main namespace and the other hosts. All mounts live in the host's own mount namespace,
so killing its PID 1 removes them; stop() also deletes the netns and veth. `host.upper` (the overlay's
upper directory) shows exactly what the host changed. Needs root, iproute2, util-linux.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shlex
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

_BOOT = r"""
set -eu
lower=$1 upper=$2 work=$3 merged=$4 name=$5
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged"
hostname "$name"
mount -t proc proc "$merged/proc"
mount -t sysfs -o ro sysfs "$merged/sys"
mount -t tmpfs -o mode=0755 tmpfs "$merged/run"
mount -t tmpfs -o mode=1777 tmpfs "$merged/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$merged/dev"
for node in null zero full random urandom tty; do
  touch "$merged/dev/$node"
  mount --bind "/dev/$node" "$merged/dev/$node"
done
mkdir -p "$merged/dev/pts" "$merged/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$merged/dev/pts"
ln -s pts/ptmx "$merged/dev/ptmx"
ln -s /proc/self/fd "$merged/dev/fd"
mount -t tmpfs -o mode=1777 tmpfs "$merged/dev/shm"
echo "$name" > "$merged/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$name" > "$merged/etc/hosts"
cd "$merged"
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
exec /usr/bin/tini -s -- /bin/sh -c '
  [ -f /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
  mkdir -p /run/sshd
  exec /usr/sbin/sshd -D -e -o HostKey=/etc/ssh/ssh_host_ed25519_key -o PermitRootLogin=prohibit-password
'
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


@dataclass
class Bridge:
    """A bridge in the main namespace with no uplink (no forwarding, no NAT)."""

    name: str = "gatest0"
    cidr: str = "10.213.0.1/24"

    @property
    def address(self) -> str:
        return self.cidr.split("/")[0]

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_interface(self.cidr).network.prefixlen

    def __enter__(self) -> Bridge:
        subprocess.run(["ip", "link", "del", self.name], capture_output=True, check=False)
        _ip("link", "add", self.name, "type", "bridge")
        _ip("addr", "add", self.cidr, "dev", self.name)
        _ip("link", "set", self.name, "up")
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "link", "del", self.name], capture_output=True, check=False)


def add_netns(name: str, bridge: Bridge | None = None, address: str | None = None) -> str:
    """A fresh network namespace ga-NAME with lo up and, given a bridge, eth0 at address on it."""
    netns = f"ga-{name}"[:15]
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    _ip("netns", "add", netns)
    _ip("-n", netns, "link", "set", "lo", "up")
    if bridge is not None and address is not None:
        veth = f"vga-{name}"[:15]
        subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", bridge.name, "up")
        _ip("-n", netns, "addr", "add", f"{address}/{bridge.prefixlen}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
    return netns


def del_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", f"ga-{name}"[:15]], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", f"vga-{name}"[:15]], capture_output=True, check=False)


@dataclass
class Host:
    name: str
    netns: str
    pid: int
    upper: Path
    process: subprocess.Popen[bytes]
    address: str | None
    log: Path

    @classmethod
    def start(cls, name: str, *, lower: Path | Sequence[Path], workdir: Path, bridge: Bridge | None = None,
              address: str | None = None, timeout_s: float = 20.0) -> Host:
        """Start a host on an overlay of lower (one directory, or several: uppermost first); its writable
        layer lives in workdir/upper."""
        upper, work, merged = workdir / "upper", workdir / "work", workdir / "merged"
        for path in (upper, work, merged):
            path.mkdir(parents=True, exist_ok=True)
        netns = add_netns(name, bridge, address)
        lowerdir = str(lower) if isinstance(lower, Path) else ":".join(map(str, lower))
        log = workdir / "host.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", netns, "unshare", "--uts", "--ipc", "--mount", "--pid", "--fork",
                 "--propagation", "private", "/bin/sh", "-c", _BOOT, "boot",
                 lowerdir, str(upper), str(work), str(merged), name],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        host = cls(name, netns, 0, upper, process, address, log)
        host.pid = host._wait_for_init(timeout_s)
        return host

    def _wait_for_init(self, timeout_s: float) -> int:
        """PID (in our namespace) of the host's PID 1: the child unshare forked, once it execs tini."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"host {self.name} exited: {self.log.read_text(errors='replace')}")
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            with contextlib.suppress(OSError):
                for pid in children.read_text().split():
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "tini":
                        return int(pid)
            time.sleep(0.05)
        raise TimeoutError(f"host {self.name} did not start: {self.log.read_text(errors='replace')}")

    def command(self, *argv: str) -> list[str]:
        """argv wrapped to run inside this host (all its namespaces, its root)."""
        return ["nsenter", "-t", str(self.pid), "-a", "--", "/usr/bin/env", "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
                "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", *argv]

    def run(self, *argv: str, check: bool = True, timeout_s: float = 600,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(*argv), capture_output=True, text=True, timeout=timeout_s,
                                check=False, input=input_text)
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name}: {shlex.join(argv)} exited {result.returncode}\n"
                                 f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
        return result

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", "-ec", script, **kwargs)  # type: ignore[arg-type]

    def root_path(self, path: str) -> Path:
        """A path inside the running host, seen from the main namespace."""
        return Path(f"/proc/{self.pid}/root") / path.lstrip("/")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Kill PID 1 (its namespace and mounts go with it), then delete the netns and veth."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                subprocess.run(["kill", "-KILL", str(self.pid)], check=False, capture_output=True)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        del_netns(self.name)


@contextlib.contextmanager
def running_host(name: str, **kwargs: object) -> Iterator[Host]:
    host = Host.start(name, **kwargs)  # type: ignore[arg-type]
    try:
        yield host
    finally:
        host.stop()
