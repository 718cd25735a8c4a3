"""The whole cycle for real: Git repos in tmp dirs, ansible-runner with a local connection whose every
path is under a temp target_root, the CLI as a separate process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import APP_INVENTORY, APP_PLAYBOOK, GitRepo, make_repo

pytestmark = pytest.mark.ansible


def run(cli, config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("run", "--json", "--config", str(config), *args)
    assert result.out, result.err
    return result.code, result.report


def kinds(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(d["task"], d["kind"]) for d in report["drift"]]


@pytest.mark.heavy  # over 60 s alone: make test-heavy runs it (make test's budget, docs/testing.md)
def test_lifecycle_apply_sync_corrective_intentional_offline_rewind(cli, write_config, app_repo: GitRepo,
                                                                    tmp_path: Path) -> None:
    config = write_config(app_repo.path)
    root = tmp_path / "root"
    first = app_repo.head

    code, report = run(cli, config)  # 1. first run applies everything
    assert (code, report["status"], report["phase_reached"]) == (0, "corrected", "done")
    assert kinds(report) == [("App config", "intentional"), ("App folder", "intentional")]
    assert report["apply"]["attempted"] and report["apply"]["changed"] == 2
    assert report["roles"] == ["app"] and report["source"]["commit"] == first
    assert (root / "app.conf").read_text() == "version=1\n"

    code, report = run(cli, config, "--check")  # 2. in sync, idempotent
    assert (code, report["status"], report["drift"], report["mode"]) == (0, "in_sync", [], "check")

    (root / "app.conf").write_text("version=1\nhacked=yes\n")  # 3. a hand edit
    code, report = run(cli, config, "--check")
    assert (code, report["status"], kinds(report)) == (2, "drifted", [("App config", "corrective")])
    assert report["apply"] is None
    (diff,) = report["drift"][0]["diffs"]
    assert diff == {"path": str(root / "app.conf"), "before": "version=1\nhacked=yes\n",
                    "after": "version=1\n"}
    assert (root / "app.conf").read_text() == "version=1\nhacked=yes\n"  # check never changes the host
    seen = report["drift"][0]["first_seen_at"]
    state = json.loads((tmp_path / "state/state.json").read_text())
    assert state["applied_commit"] == first

    code, report = run(cli, config)  # ... corrected in enforce mode
    assert (code, report["status"], kinds(report)) == (0, "corrected", [("App config", "corrective")])
    assert report["drift"][0]["first_seen_at"] == seen
    assert (root / "app.conf").read_text() == "version=1\n"

    second = app_repo.commit({"inventory/hosts.yml": APP_INVENTORY.replace('"1"', '"2"')}, "app 2")
    code, report = run(cli, config, "--check")  # 4. a new commit: intentional drift
    assert (code, kinds(report)) == (2, [("App config", "intentional")])
    assert report["source"]["commit"] == second and report["source"]["previous_commit"] == first
    assert report["source"]["subject"] == "app 2"
    state = json.loads((tmp_path / "state/state.json").read_text())
    assert state["applied_commit"] == first  # a check run never moves the applied pointer

    app_repo.git("reset", "-q", "--hard", first)  # 5. force-pushed back: a rewind
    code, report = run(cli, config, "--check")
    assert (code, report["status"], report["phase_reached"]) == (1, "error", "verify")
    assert "does not descend" in report["errors"][0]["message"]

    subprocess.run(["rm", "-rf", str(app_repo.path)], check=True)  # 6. the source is gone
    code, report = run(cli, config, "--check")
    assert report["source"]["commit"] == second  # keeps checking the last commit it had
    assert report["errors"][0]["phase"] == "fetch" and report["phase_reached"] == "done"
    assert "every source is unreachable" in report["errors"][-1]["message"]
    assert kinds(report) == [("App config", "intentional")]

    status = cli("status", "--config", str(config))
    assert status.code == 2 and "drifted" in status.out
    diff_out = cli("diff", "--config", str(config)).out
    assert "-version=1" in diff_out and "+version=2" in diff_out


def test_detect_mode_reports_and_leaves_drift(cli, write_config, app_repo: GitRepo, tmp_path: Path) -> None:
    code, report = run(cli, write_config(app_repo.path, mode="detect"))
    assert (code, report["status"], report["mode"], report["apply"]) == (2, "drifted", "detect", None)
    assert not (tmp_path / "root/app.conf").exists()


@pytest.mark.heavy  # three Ansible runs for one message: make test-heavy runs it (make test's budget)
def test_failing_task_is_named(cli, write_config, tmp_path: Path) -> None:
    playbook = APP_PLAYBOOK + """    - name: Install the widget
      ansible.builtin.fail:
        msg: widget repository unavailable
"""
    repo = make_repo(tmp_path / "origin", {"playbooks/app.yml": playbook, "inventory/hosts.yml": APP_INVENTORY})
    code, report = run(cli, write_config(repo.path))
    assert (code, report["status"], report["phase_reached"]) == (1, "failed", "apply")
    assert report["apply"]["failed_tasks"] == [{"task": "Install the widget",
                                                "message": "widget repository unavailable", "item": None}]
    code, report = run(cli, write_config(repo.path), "--check")
    assert (code, report["status"]) == (1, "failed")
    assert "task 'Install the widget' failed: widget repository unavailable" in report["errors"][0]["message"]


def test_unknown_host_is_reported(cli, write_config, app_repo: GitRepo, tmp_path: Path) -> None:
    code, report = run(cli, write_config(app_repo.path, host="stranger.example.com"))
    assert (code, report["status"], report["phase_reached"]) == (78, "error", "plan")  # EX_CONFIG
    message = report["errors"][0]["message"]
    assert "host 'stranger.example.com' is not in the inventory" in message and "/inventory" in message
    assert json.loads((tmp_path / "state/last_run.json").read_text())["run_id"] == report["run_id"]


def test_host_without_role(cli, write_config, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "origin", {"playbooks/app.yml": APP_PLAYBOOK,
                                           "inventory/hosts.yml": "all:\n  children:\n    db:\n      hosts:\n        testhost:\n"})
    code, report = run(cli, write_config(repo.path))
    assert (code, report["phase_reached"]) == (78, "plan")
    assert "has no role: none of its groups (db) has a playbook" in report["errors"][0]["message"]


def test_broken_playbook_yaml(cli, write_config, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "origin", {"playbooks/app.yml": "- hosts: app\n  tasks: [\n",
                                           "inventory/hosts.yml": APP_INVENTORY})
    code, report = run(cli, write_config(repo.path))  # the host's only role cannot be loaded: no run at all
    assert (code, report["status"], report["phase_reached"]) == (1, "failed", "plan")
    (error,) = report["errors"]
    assert error["phase"] == "plan" and error["message"].startswith("role 'app' cannot be loaded, so it did not "
                                                                    "run: YAML parsing failed")
    assert error["message"].endswith("(playbooks/app.yml line 3, column 1)")
    assert "\r" not in error["message"] and "\n" not in error["message"]
    assert report["roles"] == ["app"] and report["apply"] is None


SPECIAL = """\
- name: App
  hosts: app
  gather_facts: false
  tasks:
    - name: Stamp
      ansible.builtin.copy:
        dest: "{{ target_root }}/stamp"
        content: "{{ lookup('pipe', 'date +%s%N') }}\\n"
        mode: "0644"
    - name: Migrate
      ansible.builtin.command: /bin/true
    - name: Token
      ansible.builtin.copy:
        dest: "{{ target_root }}/token"
        content: "{{ app_token }}\\n"
        mode: "0600"
      no_log: true
"""
SECRET = "tok-8c1f0e5d2a7b"


# make test-heavy runs it (make test's budget); make test still sees a command reported unverifiable in an
# enforcing run and a check, in tests/test_strategy.py::test_facts_are_gathered_once_and_cached
@pytest.mark.heavy
def test_recurring_unverifiable_and_no_log(cli, write_config, tmp_path: Path) -> None:
    inventory = APP_INVENTORY + f'        app_token: "{SECRET}"\n'
    repo = make_repo(tmp_path / "origin", {"playbooks/app.yml": SPECIAL, "inventory/hosts.yml": inventory})
    config = write_config(repo.path)
    code, report = run(cli, config)
    assert (code, report["status"]) == (0, "corrected")
    assert kinds(report) == [("Stamp", "recurring"), ("Migrate", "unverifiable"), ("Token", "intentional")]
    token = report["drift"][2]
    assert token["diffs"] == [{"path": "Token", "before": "[REDACTED: no_log]", "after": "[REDACTED: no_log]"}]
    assert (tmp_path / "root/token").read_text() == f"{SECRET}\n"

    code, report = run(cli, config, "--check")  # neither kind triggers an apply
    assert (code, report["status"]) == (0, "in_sync")
    assert kinds(report) == [("Stamp", "recurring"), ("Migrate", "unverifiable")]

    for path in (tmp_path / "state").rglob("*"):
        if path.is_file() and "releases" not in path.parts and "repo" not in path.parts:
            assert SECRET not in path.read_text(errors="replace"), path


def test_pause_stops_applies_and_is_in_reports_and_status(cli, write_config, app_repo: GitRepo,
                                                          tmp_path: Path) -> None:
    config = write_config(app_repo.path)
    paused = cli("pause", "--reason", "db migration", "--for", "2h", "--config", str(config))
    assert paused.code == 0 and "db migration" in paused.out
    code, report = run(cli, config)
    assert (code, report["status"], report["apply"]) == (2, "paused", None)
    assert report["pause"]["reason"] == "db migration" and report["pause"]["until"]
    assert not (tmp_path / "root/app.conf").exists()
    status = cli("status", "--config", str(config))
    assert "applies paused by" in status.out and "db migration" in status.out

    cli("pause", "--reason", "freeze", "--checks-too", "--config", str(config))
    code, report = run(cli, config)
    assert (code, report["status"], report["drift"], report["durations_s"]["check"]) == (2, "paused", [], None)

    assert cli("resume", "--config", str(config)).out.strip() == "resumed"
    code, report = run(cli, config, "--check")  # one Ansible run: a check is enough to see the pause gone
    assert (code, report["status"], report["pause"]) == (2, "drifted", None)
    assert report["durations_s"]["check"] is not None
    assert "not paused" in cli("status", "--config", str(config)).out


def test_unreachable_source_without_history_is_reported_at_fetch(cli, write_config, tmp_path: Path) -> None:
    code, report = run(cli, write_config(tmp_path / "no-such-repo"))
    assert (code, report["status"], report["phase_reached"], report["roles"]) == (1, "error", "fetch", [])
    assert "no source reachable and no earlier commit" in report["errors"][0]["message"]
    assert report["source"]["commit"] is None
