"""Stage and build the .deb packages with plain dpkg-deb (see docs/packaging.md for why)."""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
_SHARED_LIBRARY = re.compile(r"\.so(\.[0-9.]+)?$")
MAINTAINER = "gitops-agent developers <gitops-agent@example.org>"


@dataclass(frozen=True)
class Package:
    name: str
    summary: str
    description: str
    depends: str
    unit: str
    conffiles: tuple[tuple[str, Path], ...]   # (installed path, source file)


AGENT = Package(
    name="gitops-agent",
    summary="pull-based GitOps agent keeping hosts in their Git-declared state",
    description=(
        "Each host pulls its desired state (Ansible playbooks and inventory) from a\n"
        "Git repository or mirror, verifies where it came from, checks for drift with\n"
        "Ansible in check mode, applies it when policy allows, and reports every run\n"
        "to a central collector. Ansible, ansible-runner and the other Python\n"
        "libraries are bundled in a virtualenv under /opt/gitops-agent, built for this\n"
        "release's python3."
    ),
    depends="python3 (>= 3.11~), python3 (<< 3.12), libc6 (>= 2.34), git, openssh-client, python3-apt, gpg",
    unit="gitops-agent.service",
    conffiles=(),  # agent.yaml is generated, see stage_agent
)
COLLECTOR = Package(
    name="gitops-collector",
    summary="collector, API and web UI for gitops-agent drift reports",
    description=(
        "Receives the run reports of gitops-agent hosts, stores them in SQLite or\n"
        "PostgreSQL and serves a query API, a web UI of drift across the fleet and\n"
        "Prometheus metrics. Runs as its own system user under a hardened systemd unit.\n"
        "Its Python libraries are bundled in a virtualenv under /opt/gitops-collector."
    ),
    depends="python3 (>= 3.11~), python3 (<< 3.12), libc6 (>= 2.34), openssh-client",  # evidence signing
    unit="gitops-collector.service",
    conffiles=(("/etc/gitops-collector/collector.env", HERE / "etc/collector.env"),),
)

COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: gitops-agent
Comment: /opt/{name} bundles third-party Python distributions (Ansible, ansible-runner and their
 dependencies); each one's license is in its *.dist-info directory there.

Files: *
Copyright: 2026 gitops-agent developers
License: Apache-2.0

License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
"""


def _install(src: Path, dest: Path, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def _write(dest: Path, text: str, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text, encoding="utf-8")
    dest.chmod(mode)


def _changelog(stage: Path, pkg: Package, version: str, date: str) -> None:
    text = (f"{pkg.name} ({version}-1) unstable; urgency=medium\n\n"
            f"  * Release {version}.\n\n -- {MAINTAINER}  {date}\n")
    dest = stage / f"usr/share/doc/{pkg.name}/changelog.Debian.gz"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0,
                                               filename="") as gz:
        gz.write(text.encode())
    dest.chmod(0o644)


def stage_common(stage: Path, pkg: Package, *, venv: Path, version: str, date: str, docs: list[Path]) -> None:
    """The parts both packages share: venv, /usr/bin link, unit, docs, overrides."""
    opt = stage / "opt" / pkg.name
    opt.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(venv, opt, symlinks=True)
    (stage / "usr/bin").mkdir(parents=True, exist_ok=True)
    if pkg is AGENT:
        _install(HERE / "bin/gitops-agent", stage / "usr/bin/gitops-agent", 0o755)
    else:
        (stage / "usr/bin" / pkg.name).symlink_to(f"/opt/{pkg.name}/bin/{pkg.name}")
    _install(HERE / "systemd" / pkg.unit, stage / "lib/systemd/system" / pkg.unit, 0o644)
    _write(stage / f"usr/share/doc/{pkg.name}/copyright", COPYRIGHT.format(name=pkg.name))
    _changelog(stage, pkg, version, date)
    for doc in docs:
        _install(doc, stage / f"usr/share/doc/{pkg.name}" / doc.name, 0o644)
    _install(HERE / "debian" / pkg.name / "lintian-overrides",
             stage / "usr/share/lintian/overrides" / pkg.name, 0o644)
    for path, src in pkg.conffiles:
        _install(src, stage / path.lstrip("/"), 0o644)


# Debian's apt bindings (package python3-apt, a dependency) made importable by the bundled interpreter, and
# nothing else of /usr/lib/python3/dist-packages. Without them Ansible's apt module re-executes itself
# under /usr/bin/python3 ("respawn"), which the mitogen strategy cannot do: every apt task failed.
SYSTEM_APT = "opt/gitops-agent/lib/python3.11/system-apt"
SYSTEM_APT_MODULES = ("apt", "aptsources", "apt_pkg.cpython-311-x86_64-linux-gnu.so",
                      "apt_inst.cpython-311-x86_64-linux-gnu.so")


def stage_system_apt(stage: Path) -> None:
    bridge = stage / SYSTEM_APT
    bridge.mkdir(parents=True, exist_ok=True)
    for name in SYSTEM_APT_MODULES:
        (bridge / name).symlink_to(f"/usr/lib/python3/dist-packages/{name}")
    _write(stage / "opt/gitops-agent/lib/python3.11/site-packages/gitops-agent-system-apt.pth",
           f"/{SYSTEM_APT}\n", 0o644)


def stage_agent_extras(stage: Path, agent_yaml: str) -> None:
    _write(stage / "etc/gitops-agent/agent.yaml", agent_yaml, 0o644)
    stage_system_apt(stage)
    (stage / "var/lib/gitops-agent").mkdir(parents=True, exist_ok=True)
    (stage / "var/lib/gitops-agent").chmod(0o700)
    _install(HERE / "bin/restart-when-idle", stage / "usr/lib/gitops-agent/restart-when-idle", 0o755)
    # The bundled Ansible's commands, for the PATH that /usr/bin/gitops-agent sets.
    tools = stage / "usr/lib/gitops-agent/bin"
    tools.mkdir(parents=True, exist_ok=True)
    for command in sorted((stage / "opt/gitops-agent/bin").glob("ansible*")):
        (tools / command.name).symlink_to(f"/opt/gitops-agent/bin/{command.name}")


def stage_collector_extras(stage: Path) -> None:
    _install(HERE / "etc/gitops-collector.sysusers", stage / "usr/lib/sysusers.d/gitops-collector.conf",
             0o644)


def _installed_size_kib(stage: Path) -> int:
    total = 0
    for path in stage.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += (path.stat().st_size + 1023) // 1024
        else:
            total += 1
    return total


def _md5sums(stage: Path) -> str:
    lines = []
    for path in sorted(stage.rglob("*")):
        rel = path.relative_to(stage)
        if rel.parts[0] == "DEBIAN" or path.is_symlink() or not path.is_file():
            continue
        lines.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel}")  # noqa: S324 (dpkg's format)
    return "\n".join(lines) + "\n"


def _normalise_modes(stage: Path) -> None:
    """Directories 0755, files 0644 or 0755 (executable bit kept), except what is meant to be private."""
    private = {stage / "var/lib/gitops-agent"}
    for path in stage.rglob("*"):
        if path.is_symlink() or path in private:
            continue
        if path.is_dir():
            path.chmod(0o755)
        elif _SHARED_LIBRARY.search(path.name):
            path.chmod(0o644)  # loaded, never executed (wheels ship some of them 0755)
        else:
            path.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)


def build(stage: Path, pkg: Package, *, version: str, out: Path) -> Path:
    """Write DEBIAN/ and run dpkg-deb; returns the .deb path."""
    _normalise_modes(stage)
    control_dir = stage / "DEBIAN"
    control_dir.mkdir(exist_ok=True)
    for script in ("postinst", "prerm", "postrm"):
        _install(HERE / "debian" / pkg.name / script, control_dir / script, 0o755)
    conffiles = sorted("/" + str(p.relative_to(stage)) for p in (stage / "etc").rglob("*") if p.is_file())
    _write(control_dir / "conffiles", "".join(f"{c}\n" for c in conffiles))
    _write(control_dir / "md5sums", _md5sums(stage))
    description = "\n".join(" " + (line or ".") for line in pkg.description.splitlines())
    _write(control_dir / "control", (
        f"Package: {pkg.name}\nVersion: {version}-1\nArchitecture: amd64\nMaintainer: {MAINTAINER}\n"
        f"Installed-Size: {_installed_size_kib(stage)}\nDepends: {pkg.depends}\nSection: admin\n"
        f"Priority: optional\nDescription: {pkg.summary}\n{description}\n"))
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"{pkg.name}_{version}-1_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(stage), str(deb)],
                   check=True, stdout=subprocess.DEVNULL)
    return deb
