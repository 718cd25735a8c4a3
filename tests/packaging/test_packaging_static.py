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
