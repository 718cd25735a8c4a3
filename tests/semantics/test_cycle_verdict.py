"""The agent's verdict on real-world playbook shapes (issue 13), each a config-repo case under
tests/semantics/cases run through whole cycles: real Git, real ansible-runner, the CLI as its own process.
Each test shares its few runs across its assertions (Ansible runs cost seconds of CPU each)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.semantics.cases import case_repo, load

pytestmark = pytest.mark.ansible


def run(cli: Any, config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("run", "--json", "--config", str(config), *args)
    assert result.out, result.err
    return result.code, result.report


def kinds(report: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    return [(d["task"], d.get("item"), d["kind"]) for d in report["drift"]]


def state(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "state/state.json").read_text())
    return data


def test_a_role_whose_plays_match_no_host_is_an_error_never_converged(cli, write_config, tmp_path: Path) -> None:
    repo = case_repo(load("no-hosts-matched"), tmp_path / "origin")
    code, report = run(cli, write_config(repo.path))
    assert (code, report["status"]) == (1, "error")
    assert [e["message"] for e in report["errors"]] == [
        "playbooks/web.yml ran no task for host 'testhost': play 'Web server' (hosts: webservers) matched no "
        "host; a role that runs nothing is never in sync"]
    assert (tmp_path / "root/motd").exists()  # the role that works was applied all the same
    assert state(tmp_path)["converged"] == []


def test_a_rescued_failure_converges(cli, write_config, tmp_path: Path) -> None:
    repo = case_repo(load("block-rescue"), tmp_path / "origin")
    config = write_config(repo.path)
    code, report = run(cli, config)
    assert (code, report["status"], report["errors"]) == (0, "corrected", [])
    assert report["stats"]["rescued"] == 1 and report["stats"]["failed"] == 0
    assert (tmp_path / "root/app.conf").read_text() == "workers=2\n"
    code, report = run(cli, config)
    assert (code, report["status"], report["apply"], report["drift"]) == (0, "in_sync", None, [])


def test_a_failure_only_in_check_mode_does_not_fail_a_converged_host(cli, write_config, tmp_path: Path) -> None:
    repo = case_repo(load("check-mode-fact"), tmp_path / "origin")
    config = write_config(repo.path)
    code, report = run(cli, config)  # the check fails, the apply works, the recheck fails the same way
    assert (code, report["status"], report["errors"]) == (0, "corrected", [])
    assert report["apply"]["failed_tasks"] == [] and (tmp_path / "root/release").read_text().strip()
    unverifiable = [d for d in report["drift"] if d["task"] == "Remember the release"]
    assert [d["kind"] for d in unverifiable] == ["unverifiable"]
    assert unverifiable[0]["reason"].startswith("fails only in check mode (the apply of this commit succeeded)")
    assert list(state(tmp_path)["check_only"]) == [report["source"]["commit"]]

    code, report = run(cli, config)  # later cycles on that commit: no apply, no failure
    assert (code, report["status"], report["apply"], report["errors"]) == (0, "in_sync", None, [])
    assert ("Remember the release", None, "unverifiable") in kinds(report)


def test_twins_of_a_looped_include_are_told_apart(cli, write_config, tmp_path: Path) -> None:
    repo = case_repo(load("include-loop-twins"), tmp_path / "origin")
    # state.json of an older agent: task keys were role, play and task name; they must just not match
    old_key = "web\x1fWeb\x1fSite config"
    (tmp_path / "state").mkdir()
    (tmp_path / "state/state.json").write_text(json.dumps({
        "last_commit": repo.head, "converged": [], "recurring": {repo.head: [old_key]},
        "drift_seen": {old_key: "2026-01-01T00:00:00.000Z"}}))
    config = write_config(repo.path)
    code, report = run(cli, config)
    assert (code, report["status"]) == (0, "corrected")
    assert kinds(report) == [("Site config", "a", "recurring"), ("Site config", "b", "intentional")]
    b = report["drift"][1]
    assert (b["ansible_role"], b["task_path"], b["role"]) == ("sites", "roles/sites/tasks/site.yml:1", "web")
    assert b["diffs"][0]["path"] == str(tmp_path / "root/site-b.conf")  # the destination, not a temp copy
    assert old_key not in state(tmp_path)["drift_seen"]

    (tmp_path / "root/site-b.conf").write_text("name = hacked\n")  # b's edit is b's, not a's recurrence
    code, report = run(cli, config, "--check")
    assert (code, report["status"]) == (2, "drifted")
    assert kinds(report) == [("Site config", "a", "recurring"), ("Site config", "b", "corrective")]


def test_apply_runs_the_playbooks_the_check_ran(cli, write_config, tmp_path: Path) -> None:
    repo = case_repo(load("fact-across-playbooks"), tmp_path / "origin")
    config = write_config(repo.path)
    (tmp_path / "root/srv").mkdir(parents=True)  # base.yml is in sync: only web.yml drifts
    code, report = run(cli, config)
    assert (code, report["status"], report["errors"]) == (0, "corrected", [])
    assert [(d["role"], d["kind"]) for d in report["drift"]] == [("web", "intentional")]
    assert (tmp_path / "root/srv/index.html").read_text() == "hello\n"


def test_a_command_that_runs_in_check_mode_is_unverifiable(cli, write_config, tmp_path: Path) -> None:
    repo = case_repo(load("command-check-mode-false"), tmp_path / "origin")
    config = write_config(repo.path, mode="detect")
    year = datetime.now(UTC).year  # the config the playbook writes, as if applied before
    (tmp_path / "root/app.conf").write_text(f"built in {year}\n")
    code, report = run(cli, config)
    assert (code, report["status"]) == (0, "in_sync")
    (item,) = report["drift"]
    assert (item["task"], item["kind"]) == ("Read the year", "unverifiable")
    assert "check_mode: false" in item["reason"]


def test_a_failed_loop_item_is_named(cli, write_config, tmp_path: Path) -> None:
    repo = case_repo(load("loop-item-fails"), tmp_path / "origin")
    code, report = run(cli, write_config(repo.path), "--check")
    assert (code, report["status"]) == (1, "failed")
    (error,) = report["errors"]
    assert error["message"].startswith("task 'Config fragments [beta]' failed: ")
    assert "Could not find or access 'files/beta.conf'" in error["message"]
    assert [(d["item"], d["kind"]) for d in report["drift"]] == [("alpha", "intentional"), ("gamma", "intentional")]


def test_a_loop_over_the_event_limit_still_drifts(cli, write_config, tmp_path: Path) -> None:
    repo = case_repo(load("big-loop"), tmp_path / "origin")
    code, report = run(cli, write_config(repo.path), "--check")
    assert (code, report["status"]) == (2, "drifted")
    assert [d["item"] for d in report["drift"]] == [str(n) for n in range(24)]
    assert {d["kind"] for d in report["drift"]} == {"intentional"}
    assert report["drift"][0]["diffs"][0]["path"] == str(tmp_path / "root/fragment-00.conf")
