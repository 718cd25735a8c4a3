"""The built .deb and .rpm files: contents, lintian, rpm metadata, a signed dnf repository."""

from __future__ import annotations

import gzip
import marshal
import re
import subprocess
from pathlib import Path

import pytest

from tests.harness import aptrepo
from tests.harness.dist import deb, rpm

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(900)]
PACKAGES = ("gitops-agent", "gitops-collector")


def _listing(package: Path) -> dict[str, str]:
    """path -> mode string, from dpkg-deb -c."""
    out = subprocess.run(["dpkg-deb", "-c", str(package)], check=True, capture_output=True, text=True).stdout
    entries = {}
    for line in out.splitlines():
        fields = line.split(None, 5)
        entries[fields[5].split(" -> ")[0].removeprefix(".").rstrip("/") or "/"] = fields[0]
    return entries


def _compiled_filename(pyc: Path) -> str:
    """The source path compiled into a .pyc (what tracebacks show): skip the 16-byte header."""
    code = marshal.loads(pyc.read_bytes()[16:])
    return str(code.co_filename)


def test_agent_deb_contents(dist: Path) -> None:
    entries = _listing(deb(dist, "gitops-agent"))
    for path in ("/opt/gitops-agent/bin/gitops-agent", "/opt/gitops-agent/bin/ansible-playbook",
                 "/opt/gitops-agent/pyvenv.cfg", "/usr/bin/gitops-agent", "/etc/gitops-agent/agent.yaml",
                 "/lib/systemd/system/gitops-agent.service", "/usr/lib/gitops-agent/restart-when-idle",
                 "/usr/share/doc/gitops-agent/copyright"):
        assert path in entries, path
    assert entries["/var/lib/gitops-agent"] == "drwx------"
    assert entries["/usr/bin/gitops-agent"] == "-rwxr-xr-x"
    assert entries["/usr/lib/gitops-agent/bin/ansible-playbook"].startswith("l")
    assert "/opt/gitops-agent/bin/gitops-collector" not in entries
    roots = {p.split("/")[1] for p in entries if p != "/"}
    assert roots <= {"etc", "lib", "opt", "usr", "var"}, roots
    control = subprocess.run(["dpkg-deb", "-f", str(deb(dist, "gitops-agent")), "Depends"], check=True,
                             capture_output=True, text=True).stdout
    for dependency in ("python3", "git", "openssh-client", "python3-apt", "gpg"):
        assert re.search(rf"(^|, ){dependency}( |,|$)", control), control


def test_collector_deb_has_its_man_page_and_completions(dist: Path, tmp_path: Path) -> None:
    entries = _listing(deb(dist, "gitops-collector"))
    for path in ("/usr/share/man/man1/gitops-collector.1.gz", "/usr/share/zsh/vendor-completions/_gitops-collector",
                 "/usr/share/bash-completion/completions/gitops-collector"):
        assert entries.get(path) == "-rw-r--r--", path
    subprocess.run(["dpkg-deb", "-x", str(deb(dist, "gitops-collector")), str(tmp_path)], check=True)
    with gzip.open(tmp_path / "usr/share/man/man1/gitops-collector.1.gz", "rt") as page:
        text = page.read()
    assert text.startswith(".TH GITOPS\\-COLLECTOR") and "token list" in text and ".SH EXIT STATUS" in text


def test_bundled_venv_has_no_build_paths(dist: Path, tmp_path: Path) -> None:
    """Shebangs, pyvenv.cfg and bytecode name /opt and /usr/bin only (the build checks it; so do we)."""
    for name in PACKAGES:
        root = tmp_path / name
        subprocess.run(["dpkg-deb", "-x", str(deb(dist, name)), str(root)], check=True)
        cfg = (root / f"opt/{name}/pyvenv.cfg").read_text()
        assert re.search(r"^home = /usr/bin$", cfg, re.M), cfg
        script = (root / f"opt/{name}/bin/{name}").read_text().splitlines()[0]
        assert script == f"#!/opt/{name}/bin/python3", script
        pycs = list((root / f"opt/{name}/lib").rglob("*.pyc"))
        assert len(pycs) > 100
        bad = [f"{p}: {f}" for p in pycs if not (f := _compiled_filename(p)).startswith(f"/opt/{name}/")]
        assert not bad, bad[:5]


@pytest.mark.parametrize("name", PACKAGES)
def test_lintian_clean_with_documented_overrides(dist: Path, name: str) -> None:
    result = subprocess.run(["lintian", "--tag-display-limit", "0", str(deb(dist, name))],
                            capture_output=True, text=True, check=False)
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert not tags, "\n".join(tags[:40])


def test_rpm_metadata_and_files(dist: Path) -> None:
    agent = rpm(dist, "gitops-agent")
    files = subprocess.run(["rpm", "-qpl", str(agent)], check=True, capture_output=True, text=True).stdout
    for path in ("/opt/gitops-agent/bin/gitops-agent", "/usr/bin/gitops-agent",
                 "/usr/lib/systemd/system/gitops-agent.service", "/etc/gitops-agent/agent.yaml",
                 "/var/lib/gitops-agent"):
        assert path in files.splitlines(), path
    requires = subprocess.run(["rpm", "-qpR", str(agent)], check=True, capture_output=True, text=True).stdout
    for dependency in ("python3.11", "git-core", "openssh-clients", "gnupg2"):
        assert dependency in requires, requires
    assert "system-apt" not in files, "Debian's apt bindings bridge has no place on RHEL"
    config = subprocess.run(["rpm", "-qpc", str(agent)], check=True, capture_output=True, text=True).stdout
    assert config.split() == ["/etc/gitops-agent/agent.yaml"]
    collector = subprocess.run(["rpm", "-qpl", str(rpm(dist, "gitops-collector"))], check=True,
                               capture_output=True, text=True).stdout
    assert "/usr/lib/systemd/system/gitops-collector.service" in collector
    for path in ("/usr/share/man/man1/gitops-collector.1.gz", "/usr/share/zsh/site-functions/_gitops-collector",
                 "/usr/share/bash-completion/completions/gitops-collector"):
        assert path in collector.splitlines(), path
    assert "/usr/lib/sysusers.d/gitops-collector.conf" in collector


def test_rpm_venv_points_at_rhel_python(dist: Path, tmp_path: Path) -> None:
    extract = subprocess.run(f"rpm2cpio {rpm(dist, 'gitops-agent')} | cpio -idm --quiet", shell=True,
                             cwd=tmp_path, check=False, capture_output=True, text=True)
    assert extract.returncode == 0, extract.stderr
    venv = tmp_path / "opt/gitops-agent"
    assert (venv / "bin/python3").readlink() == Path("/usr/bin/python3.11")
    assert "executable = /usr/bin/python3.11" in (venv / "pyvenv.cfg").read_text()


def test_signed_dnf_repository(dist: Path, signing_key: aptrepo.SigningKey, tmp_path: Path) -> None:
    repo = aptrepo.build_dnf_repo(tmp_path / "dnf", [rpm(dist, name) for name in PACKAGES], signing_key)
    subprocess.run(["gpg", "--batch", "--verify", str(repo / "repodata/repomd.xml.asc"),
                    str(repo / "repodata/repomd.xml")], check=True, env=signing_key.env(),
                   capture_output=True)
    primary = next((repo / "repodata").glob("*primary.xml.gz"))
    with gzip.open(primary, "rt") as handle:
        text = handle.read()
    for name in PACKAGES:
        assert f"<name>{name}</name>" in text
    # The packages are signed with the same key: check them against it in a throwaway rpm database.
    dbpath = tmp_path / "rpmdb"
    dbpath.mkdir()
    subprocess.run(["rpm", "--dbpath", str(dbpath), "--import", str(repo / "RPM-GPG-KEY-gitops-agent")],
                   check=True, capture_output=True)
    for package in (repo / "Packages").glob("*.rpm"):
        checked = subprocess.run(["rpm", "--dbpath", str(dbpath), "-K", str(package)], capture_output=True,
                                 text=True, check=False)
        assert checked.returncode == 0 and "signatures OK" in checked.stdout, checked.stdout + checked.stderr
