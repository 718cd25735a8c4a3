"""Fast checks of the packaging sources (no root, no build): the generated conffile, the units' promises,
the maintainer scripts and the build-path check."""

from __future__ import annotations

import configparser
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from agent import config

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"gitops_packaging_{name}", PACKAGING / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    parser = configparser.RawConfigParser(strict=False, dict_type=dict)  # type: ignore[arg-type]
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    sections: dict[str, dict[str, list[str]]] = {}
    current = ""
    for line in (PACKAGING / "systemd" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = {}
            continue
        key, _, value = line.partition("=")
        sections[current].setdefault(key, []).append(value)
    return sections


def test_conffile_shows_every_setting_and_uncommented_is_valid() -> None:
    text = _module("conffile").render(REPO)
    assert all(line.startswith("#") or not line.strip() for line in text.splitlines()), "all commented"
    for setting in config.SETTINGS:
        assert re.search(rf"^#\s*{re.escape(setting.name.split('.')[-1])}:", text, re.M), setting.name
    uncommented = "\n".join(line[1:] for line in text.splitlines() if re.match(r"^#(  )?[a-z_]+:", line))
    parsed = config.validate(yaml.safe_load(uncommented), base=Path("/etc/gitops-agent"))
    assert parsed.source.url == "https://git.example.com/ops/fleet.git"
    assert parsed.state_dir == Path("/var/lib/gitops-agent")
    assert parsed.schedule.interval_s == 1800


def test_agent_unit_can_manage_the_host_and_is_throttled() -> None:
    service = _unit("gitops-agent.service")["Service"]
    assert service["Type"] == ["notify"]
    assert service["Restart"] == ["on-failure"]
    assert "Nice" in service and "CPUQuota" in service
    assert "User" not in service, "the agent runs as root"
    for forbidden in ("ProtectSystem", "PrivateTmp", "ProtectHome", "RestrictSUIDSGID", "DynamicUser",
                      "ReadOnlyPaths", "InaccessiblePaths", "PrivateDevices", "SystemCallFilter"):
        assert forbidden not in service, forbidden
    assert service.get("UMask", ["0022"]) != ["0077"]
    assert service["ExecStart"][0].startswith("/usr/bin/gitops-agent daemon")


def test_collector_unit_is_unprivileged_and_hardened() -> None:
    service = _unit("gitops-collector.service")["Service"]
    assert service["User"] == ["gitops-collector"]
    for option, value in (("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                          ("NoNewPrivileges", "yes"), ("RestrictSUIDSGID", "yes"), ("PrivateDevices", "yes"),
                          ("CapabilityBoundingSet", "")):
        assert service.get(option) == [value], option


@pytest.mark.parametrize("script", sorted(str(p.relative_to(PACKAGING))
                                          for p in (PACKAGING / "debian").glob("*/p*")))
def test_maintainer_scripts_parse_and_never_restart_synchronously(script: str) -> None:
    path = PACKAGING / script
    subprocess.run(["sh", "-n", str(path)], check=True)
    text = path.read_text()
    for line in text.splitlines():
        if re.search(r"^\s*systemctl\b.*\b(restart|try-restart|stop|start)\b", line):
            assert "--no-block" in line, f"{script}: {line.strip()}"
    assert "deb-systemd-invoke restart" not in text


def test_agent_postinst_defers_self_upgrade_restart_out_of_the_service() -> None:
    text = (PACKAGING / "debian/gitops-agent/postinst").read_text()
    assert "/proc/self/cgroup" in text and "systemd-run" in text and "restart-when-idle" in text


def test_build_path_check_catches_leftovers(tmp_path: Path) -> None:
    bundle = _module("bundle")
    venv = tmp_path / "opt/gitops-agent"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "bin/tool").write_text("#!/opt/gitops-agent/bin/python3\n")
    bundle.check_no_build_paths(venv, ["/work/build"], prefix="/opt/gitops-agent")
    (venv / "bin/bad").write_text("#!/work/build/root/opt/gitops-agent/bin/python3\n")
    with pytest.raises(RuntimeError, match="build paths"):
        bundle.check_no_build_paths(venv, ["/work/build"], prefix="/opt/gitops-agent")


def test_wheels_are_limited_to_the_oldest_glibc() -> None:
    args = _module("bundle").platform_args()
    platforms = [args[i + 1] for i in range(0, len(args), 2)]
    assert "manylinux_2_34_x86_64" in platforms
    assert not any(re.match(r"manylinux_2_(3[5-9]|[4-9]\d)_", p) for p in platforms)
    assert "linux_x86_64" not in platforms


def test_man_page_and_completions_come_from_the_parser(tmp_path: Path) -> None:
    """packaging/cli_docs.py, as build.py runs it: every command is in the man page (which groff renders
    without warnings) and in both completions (which bash and zsh parse); a second parser works too."""
    cli_docs = _module("cli_docs")
    parser = cli_docs.load_parser("agent.cli:build_parser", REPO)
    man, bash, zsh = cli_docs.generate(parser, tmp_path, version="9.9.9", date="2026-01-02",
                                       summary=cli_docs.AGENT["summary"], files=cli_docs.AGENT["files"])
    assert man == tmp_path / "usr/share/man/man1/gitops-agent.1.gz"
    assert bash == tmp_path / "usr/share/bash-completion/completions/gitops-agent"
    assert zsh == tmp_path / "usr/share/zsh/vendor-completions/_gitops-agent"
    import gzip
    page = gzip.decompress(man.read_bytes()).decode()
    assert page.startswith('.TH GITOPS\\-AGENT "1" "2026\\-01\\-02" "gitops\\-agent 9.9.9"')
    again = cli_docs.generate(parser, tmp_path / "again", version="9.9.9", date="2026-01-02",
                              summary=cli_docs.AGENT["summary"], files=cli_docs.AGENT["files"])
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in (man, bash, zsh)], "reproducible"
    rendered = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=page, capture_output=True,
                              text=True, check=True)
    assert rendered.stderr == "", rendered.stderr
    commands = ("run", "status", "diff", "daemon", "pause", "resume", "outbox", "doctor", "version")
    for command in commands:
        assert f"gitops\\-agent {command}" in page, command
    assert ".SH FILES" in page and "exit codes" in page
    subprocess.run(["bash", "-n", str(bash)], check=True)
    subprocess.run(["zsh", "-n", str(zsh)], check=True)
    for command in commands:
        assert command in bash.read_text() and command in zsh.read_text(), command
    completed = subprocess.run(
        ["bash", "-c", f". {bash} && COMP_WORDS=(gitops-agent do) COMP_CWORD=1 && "
                       "$(complete -p gitops-agent | sed 's/.* -F \\([^ ]*\\) .*/\\1/') && echo \"${COMPREPLY[@]}\""],
        capture_output=True, text=True, check=True)
    assert completed.stdout.split() == ["doctor"]

    import argparse
    other = argparse.ArgumentParser(prog="gitops-other", description="another command")
    other.add_subparsers(dest="command").add_parser("hosts", help="list hosts")
    paths = cli_docs.generate(other, tmp_path / "other", version="1", date="2026-01-02", summary="other")
    assert [p.name for p in paths] == ["gitops-other.1.gz", "gitops-other", "_gitops-other"]
