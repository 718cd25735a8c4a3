"""ansible.strategy: mitogen and linear give the same drift report on the same drifted host; a mitogen
that cannot load falls back to linear; facts are gathered once and then reused from the cache, which starts
afresh when a commit asks for another gather_subset."""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import Any

import pytest

from agent import runner
from agent.inventory import RunPlan
from agent.runner import RunMode, RunnerSettings
from tests.conftest import APP_INVENTORY, GitRepo, make_repo

pytestmark = pytest.mark.ansible

PLAYBOOK = """\
- name: App
  hosts: app
  gather_facts: true
  tasks:
    - name: App config
      ansible.builtin.copy:
        dest: "{{ target_root }}/app.conf"
        content: "version={{ app_version }}\\nos={{ ansible_facts['system'] }}\\n"
        mode: "0644"
    - name: App folder
      ansible.builtin.file:
        path: "{{ target_root }}/data"
        state: directory
        mode: "0755"
    - name: Motd line
      ansible.builtin.lineinfile:
        path: "{{ target_root }}/motd"
        line: "managed by gitops-agent"
    - name: Already right
      ansible.builtin.copy:
        dest: "{{ target_root }}/ok.conf"
        content: "fine\\n"
        mode: "0644"
    - name: Migrate
      ansible.builtin.command: /bin/true
"""
MIN_FACTS = PLAYBOOK.replace("  gather_facts: true\n", "  gather_facts: true\n  gather_subset: [min]\n")
NETWORK_FACTS = """\
    - name: Network facts
      ansible.builtin.copy:
        dest: "{{ target_root }}/net.txt"
        content: "{{ ansible_facts.interfaces | length > 0 }}\\n"
        mode: "0644"
"""


def drifted_repo(tmp_path: Path, playbook: str = PLAYBOOK) -> GitRepo:
    root = tmp_path / "root"
    root.mkdir()
    (root / "app.conf").write_text("version=0\n")  # wrong content; data/ missing
    (root / "motd").write_text("hello\n")  # a line missing
    (root / "ok.conf").write_text("fine\n")
    (root / "ok.conf").chmod(0o644)
    return make_repo(tmp_path / "origin", {"playbooks/app.yml": playbook,
                                           "inventory/hosts.yml": APP_INVENTORY})


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    drift = [{k: v for k, v in d.items() if k != "first_seen_at"} for d in report["drift"]]
    return {"status": report["status"], "drift": drift, "stats": report["stats"]}


@pytest.mark.heavy  # two cycles; make test keeps tests/semantics/test_strategy_matrix.py's comparison
def test_mitogen_and_linear_report_the_same_drift(cli, write_config, tmp_path: Path) -> None:
    repo = drifted_repo(tmp_path).path
    reports = {}
    for strategy in ("mitogen", "linear"):
        config = write_config(repo, ansible__strategy=strategy, state_dir=str(tmp_path / strategy))
        result = cli("run", "--check", "--json", "--config", str(config))
        assert result.code == 2, result.err
        reports[strategy] = comparable(result.report)
    assert reports["mitogen"] == reports["linear"]
    drift = reports["linear"]["drift"]
    assert [(d["task"], d["kind"]) for d in drift] == [
        ("App config", "intentional"), ("App folder", "intentional"), ("Motd line", "intentional"),
        ("Migrate", "unverifiable")]
    assert drift[0]["diffs"][0]["before"] == "version=0\n"
    assert drift[0]["diffs"][0]["after"] == "version=1\nos=Linux\n"
    assert (tmp_path / "root/app.conf").read_text() == "version=0\n"  # a check never changes the host


def test_facts_are_gathered_once_and_cached(cli, write_config, tmp_path: Path) -> None:
    """One gathering serves check, apply, recheck and the next check, in a private folder per gather_subset;
    a commit that asks for a larger subset starts a fresh folder (the smaller subset's is removed), so its
    play sees the new facts at once rather than when the old cache expires. On the way: a command, which
    check mode skips, is unverifiable drift in an enforcing run and in a check, and never starts an apply."""
    repo = drifted_repo(tmp_path, MIN_FACTS)
    config = write_config(repo.path)
    report = cli("run", "--json", "--config", str(config)).report
    assert report["status"] == "corrected"
    assert [(d["task"], d["kind"]) for d in report["drift"]] == [
        ("App config", "intentional"), ("App folder", "intentional"), ("Motd line", "intentional"),
        ("Migrate", "unverifiable")]
    (subset,) = (tmp_path / "state/facts").iterdir()  # one folder: the facts of one gather_subset
    (cache,) = subset.iterdir()  # one file: this host's facts
    gathered_at = cache.stat().st_mtime_ns
    assert subset.stat().st_mode & 0o077 == 0 and (tmp_path / "state/facts").stat().st_mode & 0o077 == 0
    report = cli("run", "--check", "--json", "--config", str(config)).report
    assert report["status"] == "in_sync"
    assert [(d["task"], d["kind"]) for d in report["drift"]] == [("Migrate", "unverifiable")]
    assert cache.stat().st_mtime_ns == gathered_at  # check, apply, recheck, check: one gathering

    repo.commit({"playbooks/app.yml": MIN_FACTS.replace("[min]", "[min, network]") + NETWORK_FACTS})
    result = cli("run", "--check", "--json", "--config", str(config))
    assert (result.code, result.report["status"]) == (2, "drifted"), result.report["errors"]
    drift = result.report["drift"]
    assert [(d["task"], d["kind"]) for d in drift] == [("Migrate", "unverifiable"),
                                                       ("Network facts", "intentional")]
    assert drift[1]["diffs"][0]["after"].strip() == "True"  # the network facts, not the [min] cache
    (fresh,) = (tmp_path / "state/facts").iterdir()  # the old subset's folder is gone
    assert fresh.name != subset.name and stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_mitogen_that_cannot_load_falls_back_to_linear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken-strategy"
    broken.mkdir()
    (broken / "mitogen_linear.py").write_text("raise ImportError('mitogen is broken here')\n")
    monkeypatch.setattr(runner, "mitogen_strategy_dir", lambda: broken)
    repo = make_repo(tmp_path / "origin", {"playbooks/app.yml": PLAYBOOK.replace("true", "false", 1)
                                           .replace("\\nos={{ ansible_facts['system'] }}", ""),
                                           "inventory/hosts.yml": APP_INVENTORY})
    plan = RunPlan(host="testhost", commit="0" * 40, roles=("app",), playbooks=(repo.path / "playbooks/app.yml",),
                   inventory=repo.path / "inventory", project_dir=repo.path)
    settings = RunnerSettings(work_dir=tmp_path / "work", timeout_s=120, strategy="mitogen",
                              extra_vars={"target_root": str(tmp_path / "root")})
    (tmp_path / "root").mkdir()
    with caplog.at_level(logging.WARNING, logger="agent.runner"):
        result = runner.run_playbooks(plan, RunMode.CHECK, settings, cancel=lambda: False)
    assert [t.task for t in result.parsed.tasks][:2] == ["App config", "App folder"]  # ran, with linear
    assert "running the check again with linear" in caplog.text


def test_facts_prologue_only_when_a_play_gathers(tmp_path: Path) -> None:
    books = {"off": "- hosts: all\n  gather_facts: false\n  tasks: []\n",
             "default": "- hosts: all\n  tasks: []\n",
             "imports": "- ansible.builtin.import_playbook: other.yml\n"}
    for name, text in books.items():
        (tmp_path / f"{name}.yml").write_text(text)
    assert not runner.plays_gather_facts((tmp_path / "off.yml",))
    assert runner.plays_gather_facts((tmp_path / "off.yml", tmp_path / "default.yml"))
    assert runner.plays_gather_facts((tmp_path / "imports.yml",))
