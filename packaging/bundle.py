"""Bundled virtualenvs: wheels downloaded on the build machine, venvs made inside a Debian 12 root.

The venv is created at its final path (/opt/NAME) *inside a chroot of the cached debootstrap image*, with
that image's own /usr/bin/python3, from wheels installed with --no-index --find-links (nothing inside the
chroot reaches the network). Shebangs, pyvenv.cfg and bytecode therefore name /opt/NAME and /usr/bin
only; check_no_build_paths() proves it and fails the build otherwise.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

# Wheels must run on the oldest target's glibc: RHEL 9 has 2.34, Debian 12 has 2.36.
OLDEST_GLIBC_MINOR = 34
PYTHON_VERSION = "3.11"
# Where the wheel directories appear inside the build root (a private, throwaway chroot).
WHEELS_MOUNT = "/tmp/wheels"  # noqa: S108
PROJECT_MOUNT = "/tmp/project"  # noqa: S108
MOUNTS = (WHEELS_MOUNT, PROJECT_MOUNT)


def platform_args() -> list[str]:
    args: list[str] = []
    for minor in range(OLDEST_GLIBC_MINOR, 16, -1):
        args += ["--platform", f"manylinux_2_{minor}_x86_64"]
    for legacy in ("manylinux2014", "manylinux2010", "manylinux1"):
        args += ["--platform", f"{legacy}_x86_64"]
    return args


def project_meta(src: Path) -> dict[str, object]:
    with (src / "pyproject.toml").open("rb") as handle:
        project = tomllib.load(handle)["project"]
    return {"name": project["name"], "version": project["version"],
            "dependencies": project.get("dependencies", []),
            "extras": project.get("optional-dependencies", {})}


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def project_wheel(src: Path, out: Path) -> Path:
    """Build the project's own wheel (pure Python) from src."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    _pip("wheel", "--no-deps", "-w", str(out), str(src))
    wheels = list(out.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one project wheel in {out}, found {wheels}")
    return wheels[0]


def dependency_wheels(wheel: Path, meta: dict[str, object], cache: Path) -> Path:
    """Download the dependency wheels (with the collector extra) once per dependency set."""
    key_data = json.dumps([meta["dependencies"], meta["extras"], platform_args(), PYTHON_VERSION],
                          sort_keys=True).encode()
    target = cache / "wheels" / hashlib.sha256(key_data).hexdigest()[:16]
    if (target / ".complete").exists():
        return target
    partial = target.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _pip("download", "-d", str(partial), "--only-binary=:all:", *platform_args(),
         "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp311", "--abi", "abi3",
         "--abi", "none", f"{wheel}[collector]")
    for own in partial.glob(wheel.name):
        own.unlink()
    (partial / ".complete").write_text("", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _chroot_script(prefix: str, requirement: str, smoke: str, drop: str) -> str:
    return f"""
set -eu
export LC_ALL=C.UTF-8 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
rm -rf {prefix}
/usr/bin/python3 -m venv {prefix}
{prefix}/bin/python3 -m pip install -q --no-index --find-links {WHEELS_MOUNT} --find-links {PROJECT_MOUNT} \\
    '{requirement}'
{prefix}/bin/python3 -m pip uninstall -q -y pip setuptools
# pip records where a local wheel came from: a build path that must not ship.
rm -f {prefix}/lib/python3*/site-packages/*.dist-info/direct_url.json
rm -f {prefix}/bin/Activate.ps1 {prefix}/bin/activate.csh {prefix}/bin/activate.fish {drop}
{smoke}
"""


def build_venv(root: Path, *, prefix: str, requirement: str, wheels: Path, project: Path,
               smoke: str, drop: tuple[str, ...] = ()) -> Path:
    """Create venv at prefix inside root (a Debian root filesystem); returns root/prefix."""
    for mount_point in MOUNTS:
        (root / mount_point.lstrip("/")).mkdir(parents=True, exist_ok=True)
    dropped = " ".join(f"{prefix}/bin/{name}" for name in drop)
    script = _chroot_script(prefix, requirement, smoke, dropped)
    inner = (
        f"mount --rbind /dev {root}/dev && mount -t proc proc {root}/proc && "
        f"mount --bind -o ro {wheels} {root}{WHEELS_MOUNT} && "
        f"mount --bind -o ro {project} {root}{PROJECT_MOUNT} && "
        f"exec chroot {root} /bin/sh -c \"$0\""
    )
    subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", inner, script],
                   check=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"})
    return root / prefix.lstrip("/")


def check_no_build_paths(tree: Path, needles: list[str], *, prefix: str) -> None:
    """Fail if any file names a build path, or a script/pyvenv.cfg points anywhere but prefix//usr/bin."""
    encoded = [n.encode() for n in needles if n and n != "/"]
    problems: list[str] = []
    for path in tree.rglob("*"):
        if path.is_symlink():
            target = str(path.readlink())
            if any(n.decode() in target for n in encoded):
                problems.append(f"{path}: symlink to {target}")
            continue
        if not path.is_file():
            continue
        data = path.read_bytes()
        for needle in encoded:
            if needle in data:
                problems.append(f"{path}: contains {needle.decode()}")
        if data.startswith(b"#!") and path.parent.name == "bin":
            shebang = data.split(b"\n", 1)[0].decode(errors="replace")
            allowed = rf"^#!\s*({re.escape(prefix)}/bin/python3?|/bin/sh|/usr/bin/env \S+)\s*$"
            if not re.match(allowed, shebang):
                problems.append(f"{path}: shebang {shebang}")
    cfg = (tree / "pyvenv.cfg").read_text(encoding="utf-8")
    if not re.search(r"^home = /usr/bin$", cfg, re.M):
        problems.append(f"pyvenv.cfg: home is not /usr/bin:\n{cfg}")
    if problems:
        raise RuntimeError("build paths left in the bundled venv:\n  " + "\n  ".join(problems[:40]))


def retarget_for_rpm(venv: Path, *, prefix: str, python: str = "/usr/bin/python3.11") -> None:
    """Point a venv made on Debian at the RHEL family's interpreter (python3.11 package)."""
    for name in ("python", "python3", "python3.11"):
        link = venv / "bin" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(python)
    cfg = venv / "pyvenv.cfg"
    lines = []
    for line in cfg.read_text(encoding="utf-8").splitlines():
        key = line.split("=", 1)[0].strip()
        if key == "executable":
            line = f"executable = {python}"
        elif key == "command":
            line = f"command = {python} -m venv {prefix}"
        lines.append(line)
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
