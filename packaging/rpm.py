"""Build the .rpm packages with rpmbuild from an already staged tree (RHEL-family 9, python3.11).

rpmbuild only packs here: the venv is the one built in the Debian 12 root, retargeted to
/usr/bin/python3.11 (same CPython minor, wheels limited to glibc 2.34). rpm's own post-install
processing (bytecode recompilation with the build machine's Python, shebang mangling, debuginfo
extraction, stripping) is switched off, because it would put build-machine paths into the venv.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SPEC = """\
%global debug_package %{{nil}}
%global __os_install_post %{{nil}}
%global __brp_mangle_shebangs %{{nil}}
%global _build_id_links none
%define _binary_payload w7.zstdio

Name: {name}
Version: {version}
Release: 1
Summary: {summary}
License: Apache-2.0
BuildArch: x86_64
AutoReqProv: no
Requires: python3.11, glibc >= 2.34, systemd{requires}

%description
{description}

%install
cp -a {stage}/. %{{buildroot}}/

%files
{files}

{scripts}
"""

AGENT_FILES = """\
/opt/gitops-agent
/usr/bin/gitops-agent
/usr/lib/gitops-agent
/usr/lib/systemd/system/gitops-agent.service
/usr/share/man/man1/gitops-agent.1.gz
/usr/share/bash-completion/completions/gitops-agent
/usr/share/zsh/site-functions/_gitops-agent
%dir /etc/gitops-agent
%config(noreplace) /etc/gitops-agent/agent.yaml
%dir %attr(0700,root,root) /var/lib/gitops-agent
%doc /usr/share/doc/gitops-agent"""

AGENT_SCRIPTS = """\
%post
systemctl daemon-reload >/dev/null 2>&1 || :
if [ $1 -eq 1 ]; then systemctl preset gitops-agent.service >/dev/null 2>&1 || :; fi

%preun
if [ $1 -eq 0 ]; then
  systemctl --no-reload disable gitops-agent.service >/dev/null 2>&1 || :
  systemctl --no-block stop gitops-agent.service >/dev/null 2>&1 || :
fi

%postun
systemctl daemon-reload >/dev/null 2>&1 || :
if [ $1 -ge 1 ]; then
  if grep -qE '/gitops-agent\\.service(/|$)' /proc/self/cgroup 2>/dev/null; then
    systemd-run --no-block --collect --quiet --unit=gitops-agent-restart \\
      /usr/lib/gitops-agent/restart-when-idle || :
  else
    systemctl --no-block try-restart gitops-agent.service >/dev/null 2>&1 || :
  fi
else
  rm -rf /opt/gitops-agent
fi"""

COLLECTOR_FILES = """\
/opt/gitops-collector
/usr/bin/gitops-collector
/usr/share/man/man1/gitops-collector.1.gz
/usr/share/bash-completion/completions/gitops-collector
/usr/share/zsh/site-functions/_gitops-collector
/usr/lib/systemd/system/gitops-collector.service
/usr/lib/sysusers.d/gitops-collector.conf
%dir /etc/gitops-collector
%config(noreplace) /etc/gitops-collector/collector.env
%doc /usr/share/doc/gitops-collector"""

COLLECTOR_SCRIPTS = """\
%pre
getent passwd gitops-collector >/dev/null || useradd --system --user-group \\
  --home-dir /var/lib/gitops-collector --no-create-home --shell /sbin/nologin gitops-collector

%post
systemctl daemon-reload >/dev/null 2>&1 || :
if [ $1 -eq 1 ]; then systemctl preset gitops-collector.service >/dev/null 2>&1 || :; fi

%preun
if [ $1 -eq 0 ]; then
  systemctl --no-reload disable gitops-collector.service >/dev/null 2>&1 || :
  systemctl --no-block stop gitops-collector.service >/dev/null 2>&1 || :
fi

%postun
systemctl daemon-reload >/dev/null 2>&1 || :
if [ $1 -ge 1 ]; then systemctl --no-block try-restart gitops-collector.service >/dev/null 2>&1 || :; fi
if [ $1 -eq 0 ]; then rm -rf /opt/gitops-collector; fi"""


def restage(deb_stage: Path, rpm_stage: Path) -> Path:
    """Copy a .deb staging tree into the RHEL layout (units under /usr/lib, no Debian-only files)."""
    shutil.rmtree(rpm_stage, ignore_errors=True)
    shutil.copytree(deb_stage, rpm_stage, symlinks=True, ignore=shutil.ignore_patterns("DEBIAN"))
    units = rpm_stage / "lib/systemd/system"
    (rpm_stage / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    units.rename(rpm_stage / "usr/lib/systemd/system")
    shutil.rmtree(rpm_stage / "lib")
    shutil.rmtree(rpm_stage / "usr/share/lintian", ignore_errors=True)
    for debian_only in (rpm_stage / "usr/share/doc").glob("*/changelog.Debian.gz"):
        debian_only.unlink()
    zsh = rpm_stage / "usr/share/zsh"
    if (zsh / "vendor-completions").is_dir():  # Debian's place for packaged zsh completions; RHEL's:
        (zsh / "vendor-completions").rename(zsh / "site-functions")
    # The bridge to Debian's apt bindings: on RHEL, dnf's bindings belong to the platform Python, so
    # Ansible's dnf module re-executes itself there instead.
    for debian_only in rpm_stage.glob("opt/*/lib/python3.11/site-packages/gitops-agent-system-apt.pth"):
        debian_only.unlink()
    for debian_only in rpm_stage.glob("opt/*/lib/python3.11/system-apt"):
        shutil.rmtree(debian_only)
    return rpm_stage


def build(rpm_stage: Path, *, name: str, version: str, summary: str, description: str, out: Path,
          work: Path) -> Path:
    agent = name == "gitops-agent"
    spec = SPEC.format(
        name=name, version=version, summary=summary, description=description, stage=rpm_stage,
        requires=", git-core, openssh-clients, gnupg2" if agent else ", openssh-clients",  # evidence signing
        files=AGENT_FILES if agent else COLLECTOR_FILES,
        scripts=AGENT_SCRIPTS if agent else COLLECTOR_SCRIPTS,
    )
    topdir = work / "rpmbuild"
    (topdir / "SPECS").mkdir(parents=True, exist_ok=True)
    spec_path = topdir / "SPECS" / f"{name}.spec"
    spec_path.write_text(spec, encoding="utf-8")
    subprocess.run(
        ["rpmbuild", "-bb", "--quiet", "--target", "x86_64", "--define", f"_topdir {topdir}",
         "--define", f"_rpmdir {out}",
         "--define", "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
         str(spec_path)],
        check=True, stdout=subprocess.DEVNULL,
    )
    return out / f"{name}-{version}-1.x86_64.rpm"
