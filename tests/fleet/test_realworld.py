"""The real-world tier: two roles in the shape public roles have (written here, tests/realworld/repo), each on
a fresh isolated Debian 12 host booted under systemd, run by the agent's .deb under its default settings
(strategy mitogen, enforce mode), as root with no sudo installed, as minimal servers are.

- real1, role `memcached`: installs the distribution's package (from the site's signed apt mirror),
  templates /etc/memcached.conf with a restart handler, keeps the service running; the play says
  `become: true`.
- real2, role `hardening`: sshd settings (a loop of lineinfile with validate, a reload handler), kernel
  network settings with `ansible.posix.sysctl` (the collection vendored under collections/ from the
  `ansible` package, licence included; set live only where /proc/sys is writable, which it is not under
  systemd-nspawn), password ageing in /etc/login.defs, `check_mode: false` fact commands, and a block
  whose rescue supplies a default when the host has no site-specific sshd lines (as here).

Each host must: converge from fresh; report a hand edit of a managed file as corrective drift in detect
mode and leave it; correct it in enforce mode; and then be in sync. The steps run in order, per host,
on the fleet's bridge and Git server (tests/fleet/conftest.py). Host state is read over SSH (testinfra).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fleet.fleet import AgentRun, ConfigRepo, Fleet, Member
from tests.harness import image, netns, nspawn
from tests.harness.collections import vendor_collection

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1] / "realworld" / "repo"
ADDRESSES = {"real1": "10.213.9.31", "real2": "10.213.9.32"}
ROLE = {"real1": "cache", "real2": "hardening"}


@dataclass(frozen=True)
class HandEdit:
    """A change an operator makes by hand to a file the role manages, and the task that manages it."""

    command: str
    path: str
    task: str
    edited: str  # a line the edit leaves in the file


EDITS = {
    "real1": HandEdit("sed -i 's/^-m 64$/-m 1024/' /etc/memcached.conf", "/etc/memcached.conf",
                      "Memcached configuration", "-m 1024"),
    "real2": HandEdit("sed -i 's/^PasswordAuthentication no$/PasswordAuthentication yes/' /etc/ssh/sshd_config",
                      "/etc/ssh/sshd_config", "Hardened sshd settings", "PasswordAuthentication yes"),
}

# Steps that fail because of a known fault, each naming its issue (strict: a step that starts to pass fails
# until its entry goes). Empty since issue 13's kinds landed.
PENDING: dict[tuple[str, str], str] = {}


def hosts(step: str) -> list[Any]:
    return [pytest.param(name, id=name, marks=[pytest.mark.xfail(reason=PENDING[step, name], strict=True)]
                         if (step, name) in PENDING else []) for name in ADDRESSES]


def _config(host: str, git_url: str) -> str:
    return yaml.safe_dump({
        "host": host,
        "source": {"url": git_url, "ref": "main", "verify": "gpg",
                   "trusted_keys": "/etc/gitops-agent/trusted-keys", "timeout": "20s"},
        "mode": "enforce", "schedule": {"timeout": "10m"},
    }, sort_keys=False)


def _config_repo(fleet: Fleet, tmp: Path) -> str:
    """The real-world config repo, its collection vendored, signed like the fleet's and served beside it."""
    bare, work = fleet.git_server.base / "realworld.git", tmp / "realworld-work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    shutil.copytree(REPO, work)
    vendor_collection("ansible.posix", work / "collections")
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    repo = ConfigRepo(work, bare, fleet.repo.gnupghome, fleet.repo.fingerprint)
    repo.git("remote", "add", "origin", str(bare))
    repo.commit({}, "real-world roles: memcached and hardening")
    return fleet.git_server.url("realworld.git")


def _prepare(upper: Path, name: str, config: str) -> None:
    """The host's name and agent configuration; the packaged daemon masked, so only the test's runs act."""
    (upper / "etc").mkdir(parents=True, exist_ok=True)
    (upper / "etc/hostname").write_text(f"{name}\n", encoding="utf-8")  # the shared layer's is the seed's
    etc = upper / "etc/gitops-agent"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "agent.yaml").write_text(config, encoding="utf-8")
    units = upper / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    (units / "gitops-agent.service").symlink_to("/dev/null")


@pytest.fixture(scope="module")
def realworld(fleet: Fleet, image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Member]]:
    assert fleet.layer is not None and fleet.bridge is not None
    tmp = tmp_path_factory.mktemp("realworld")
    git_url = _config_repo(fleet, tmp)
    ssh_config = next(iter(fleet.members.values())).ssh_config
    with contextlib.ExitStack() as stack:
        members: dict[str, Member] = {}
        for name, address in ADDRESSES.items():
            _prepare(tmp / name / "upper", name, _config(name, git_url))
            netns_name = netns.add_netns(name, fleet.bridge, address)
            stack.callback(netns.del_netns, name)
            stack.callback(image.remove_tree, tmp / name / "nspawn")
            machine = stack.enter_context(nspawn.booted(
                name, lower=[fleet.layer, image_root], upper=tmp / name / "upper", workdir=tmp / name / "nspawn",
                netns=netns_name))
            members[name] = Member(name, address, ("all", ROLE[name]), ssh_config, machine=machine)
        for member in members.values():
            assert member.machine is not None
            member.machine.wait_booted(120)
        yield members


def summary(run: AgentRun) -> str:
    report = run.report
    apply = report.get("apply") or {}
    failures = [e["message"][:400] for e in report["errors"]] + [
        f"{t['task']}: {t['message'][:400]}" for t in apply.get("failed_tasks", [])]
    drift = [(d["task"], d["kind"]) for d in report["drift"]]
    return f"{run.host}: exit {run.exit_code}, {report['status']}, drift {drift}, failures {failures}"


def corrective(run: AgentRun) -> list[dict[str, Any]]:
    return [d for d in run.report["drift"] if d["kind"] == "corrective"]


def assert_converged_state(member: Member) -> None:
    host = member.ssh()
    if member.name == "real1":
        conf = host.file("/etc/memcached.conf")
        assert conf.mode == 0o644 and "-m 64\n" in conf.content_string and "-l 127.0.0.1\n" in conf.content_string
        assert host.package("memcached").is_installed
        assert host.service("memcached").is_running and host.service("memcached").is_enabled
        assert host.socket("tcp://127.0.0.1:11211").is_listening
    else:
        sshd = host.file("/etc/ssh/sshd_config").content_string
        assert "PasswordAuthentication no\n" in sshd and "Banner /etc/issue.net\n" in sshd
        assert "authorised use only" in host.file("/etc/issue.net").content_string
        # /proc/sys is read-only under systemd-nspawn: the role writes the file and does not set them now.
        assert "net.ipv4.conf.all.accept_redirects=0" in host.file("/etc/sysctl.d/60-hardening.conf").content_string
        assert "PASS_MAX_DAYS\t180\n" in host.file("/etc/login.defs").content_string
        assert host.service("ssh").is_running


def set_mode(member: Member, mode: str) -> None:
    member.run("sed", "-i", f"s/^mode: .*$/mode: {mode}/", "/etc/gitops-agent/agent.yaml")


class Steps:
    """Each step runs the agent on both hosts at once (they are independent), once; the tests of that step
    then judge each host's run on its own."""

    def __init__(self, members: dict[str, Member]) -> None:
        self.members = members
        self.runs: dict[str, dict[str, AgentRun]] = {}

    def run(self, step: str, before: Callable[[Member], None] | None = None) -> dict[str, AgentRun]:
        if step not in self.runs:
            for member in self.members.values():
                if before is not None:
                    before(member)
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=len(self.members)) as pool:
                self.runs[step] = dict(zip(self.members, pool.map(Member.agent, self.members.values()),
                                           strict=True))
            took = {name: run.report["durations_s"].get("total") for name, run in self.runs[step].items()}
            print(f"\nreal-world step {step}: {time.monotonic() - started:.0f}s for both hosts, agent totals {took}")
        return self.runs[step]


@pytest.fixture(scope="module")
def steps(realworld: dict[str, Member]) -> Steps:
    return Steps(realworld)


def hand_edit_in_detect_mode(member: Member) -> None:
    member.run("/bin/sh", "-c", EDITS[member.name].command)
    set_mode(member, "detect")


@pytest.mark.parametrize("name", hosts("converges"))
def test_1_a_fresh_host_converges(steps: Steps, name: str) -> None:
    first = steps.run("converges")[name]
    assert (first.exit_code, first.report["status"]) == (0, "corrected"), summary(first)
    assert first.report["roles"] == [ROLE[name]]
    assert_converged_state(steps.members[name])


@pytest.mark.parametrize("name", hosts("detect"))
def test_2_a_hand_edit_is_corrective_drift_in_detect_mode(steps: Steps, name: str) -> None:
    edit = EDITS[name]
    detect = steps.run("detect", before=hand_edit_in_detect_mode)[name]
    assert (detect.exit_code, detect.report["status"]) == (2, "drifted"), summary(detect)
    found = [d for d in corrective(detect) if d["task"] == edit.task]
    assert found, summary(detect)
    assert any(diff["path"] == edit.path and edit.edited in (diff["before"] or "")
               for item in found for diff in item["diffs"]), found
    assert not [d for d in detect.report["drift"] if d["kind"] in ("intentional", "recurring")], summary(detect)
    assert edit.edited in steps.members[name].ssh().file(edit.path).content_string  # left alone


@pytest.mark.parametrize("name", hosts("enforce"))
def test_3_the_hand_edit_is_corrected_in_enforce_mode(steps: Steps, name: str) -> None:
    edit = EDITS[name]
    enforce = steps.run("enforce", before=lambda member: set_mode(member, "enforce"))[name]
    assert (enforce.exit_code, enforce.report["status"]) == (0, "corrected"), summary(enforce)
    assert edit.task in [d["task"] for d in corrective(enforce)], summary(enforce)
    assert edit.edited not in steps.members[name].ssh().file(edit.path).content_string
    assert_converged_state(steps.members[name])


@pytest.mark.parametrize("name", hosts("in_sync"))
def test_4_the_next_run_is_in_sync(steps: Steps, name: str) -> None:
    again = steps.run("in_sync")[name]
    assert (again.exit_code, again.report["status"], again.report["drift"]) == (0, "in_sync", []), summary(again)
