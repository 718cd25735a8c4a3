"""A cached Debian 12 minbase root filesystem, built with debootstrap on a cache miss.

The cache holds a zstd tarball (not the tree) named by a hash of the recipe, so changing the recipe
builds a new image and an unchanged recipe never rebuilds. Extracting takes a few seconds.

    from tests.harness import image
    tarball = image.ensure_image()            # builds once (1-3 min), then cached
    root = image.extract(tarball, tmp_path / "root")

Needs root, debootstrap and zstd. The Debian mirror is read from this machine's own apt sources at run
time (the image is then left with no apt source at all: tests add a file: source of their own).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ENV = "GITOPS_TEST_CACHE_DIR"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

# What the fleet and packaging tests need in a host: an interpreter (the agent's venv is made from it),
# sshd for testinfra, git for file:// sources, tini as a tiny PID 1, and systemd+dbus so one host can
# boot under systemd-nspawn. python3-apt is deliberately NOT here: the packaging tests prove that apt
# resolves it from the local signed repository, as an air-gapped site's mirror would.
DEFAULT_INCLUDE = (
    "python3", "python3-venv", "openssh-server", "iproute2", "git", "ca-certificates", "tini",
    "systemd", "systemd-sysv", "dbus",
)


@dataclass(frozen=True)
class Recipe:
    suite: str = "bookworm"
    variant: str = "minbase"
    include: tuple[str, ...] = DEFAULT_INCLUDE
    arch: str = "amd64"
    # Bump when the post-install steps in _finish() change meaning.
    steps_version: int = 3
    extra: tuple[str, ...] = field(default=())

    def key(self) -> str:
        data = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(data).hexdigest()[:16]

    def name(self) -> str:
        return f"debian-{self.suite}-{self.variant}-{self.arch}-{self.key()}.tar.zst"


def cache_dir() -> Path:
    """$GITOPS_TEST_CACHE_DIR, else .cache/ in the work tree (gitignored)."""
    return Path(os.environ.get(CACHE_ENV) or REPO_ROOT / ".cache")


def debian_mirror() -> str:
    """The first Debian archive URI this machine's apt already uses (never hard-coded in the project)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and "security" not in uris.group(1) and "bookworm" in suites.group(1):
                return uris.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[-3] if parts[1].startswith("[") else parts[1]
    raise RuntimeError("no Debian mirror found in /etc/apt/sources.list.d/*.sources or sources.list")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_image(recipe: Recipe = Recipe(), *, directory: Path | None = None) -> Path:
    """Path of the cached tarball for recipe, building it first on a cache miss."""
    images = (directory or cache_dir()) / "images"
    tarball = images / recipe.name()
    with _locked(images / ".lock"):
        if not tarball.exists():
            build_image(recipe, tarball)
    return tarball


def build_image(recipe: Recipe, tarball: Path) -> float:
    """debootstrap into a temporary directory, clean it up, pack it; returns seconds taken."""
    started = time.monotonic()
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix=".build-") as tmp:
        root = Path(tmp) / "root"
        include = ",".join((*recipe.include, *recipe.extra))
        subprocess.run(
            ["debootstrap", f"--variant={recipe.variant}", f"--arch={recipe.arch}", f"--include={include}",
             f"--keyring={KEYRING}", recipe.suite, str(root), debian_mirror()],
            check=True, stdout=subprocess.DEVNULL,
        )
        _finish(root)
        partial = tarball.with_suffix(".partial")
        pack(root, partial)
        partial.rename(tarball)
    elapsed = time.monotonic() - started
    (tarball.parent / (tarball.name + ".json")).write_text(
        json.dumps({"recipe": asdict(recipe), "build_s": round(elapsed, 1),
                    "size_bytes": tarball.stat().st_size}, indent=1) + "\n", encoding="utf-8")
    return elapsed


def _finish(root: Path) -> None:
    """Make the tree a neutral template: no identity, no network source, no caches."""
    for rel in ("etc/hostname", "etc/resolv.conf", "etc/apt/sources.list"):
        (root / rel).unlink(missing_ok=True)
    (root / "etc/machine-id").write_text("", encoding="utf-8")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for rel in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (root / rel).glob("*"):
            if item.is_file():
                item.unlink()
    for item in (root / "var/cache/apt").glob("*.bin"):
        item.unlink()
    # A booted test container must not wait on a network or spawn a getty on a missing tty.
    wants = root / "etc/systemd/system"
    for unit in ("systemd-networkd-wait-online.service", "getty@tty1.service"):
        link = wants / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    # Host keys were removed above; under systemd (nspawn) sshd makes its own on first start.
    dropin = root / "etc/systemd/system/ssh.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    # Debian's unit checks its configuration (`sshd -t`) first, which fails without keys: make them first.
    (dropin / "host-keys.conf").write_text(
        "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n",
        encoding="utf-8")


def pack(root: Path, tarball: Path) -> None:
    tar = subprocess.Popen(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", "-", "."],
                           stdout=subprocess.PIPE)
    with tarball.open("wb") as out:
        subprocess.run(["zstd", "-q", "-T0", "-3"], stdin=tar.stdout, stdout=out, check=True)
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() != 0:
        raise RuntimeError(f"tar of {root} failed")


def extract(tarball: Path, dest: Path) -> Path:
    """Unpack the image into dest (created); returns dest."""
    dest.mkdir(parents=True, exist_ok=True)
    zstd = subprocess.Popen(["zstd", "-q", "-dc", str(tarball)], stdout=subprocess.PIPE)
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", "-", "-C", str(dest)],
                   stdin=zstd.stdout, check=True)
    assert zstd.stdout is not None
    zstd.stdout.close()
    if zstd.wait() != 0:
        raise RuntimeError(f"cannot decompress {tarball}")
    return dest


def remove_tree(path: Path) -> None:
    """rm -rf that also works on trees holding root-owned read-only directories."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


if __name__ == "__main__":
    import sys

    t0 = time.monotonic()
    print(ensure_image(), f"{time.monotonic() - t0:.1f}s", file=sys.stderr)
