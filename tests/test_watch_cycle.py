"""The cycle's hand-off of managed paths to the daemon's watcher (state_dir/watch.json), on recorded
playbook runs (tests/test_cycle_cases.py's RecordedRunner): which run's paths the watcher gets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from agent import config as config_mod
from agent.cycle import Cycle, CycleOptions
from agent.inventory import RunPlan
from agent.report import Report, Status
from agent.runner import RunMode, RunnerSettings, RunResult
from agent.watchpaths import RolePaths
from agent.watchservice import read_set
from agent.wiring import CycleParts, git_source, state_store
from tests.conftest import make_repo
from tests.test_cycle_cases import HOST, PLAYBOOK, RecordedRunner

CHANGED = {"task": "App config", "outcome": "changed", "diffs": [["/etc/app/app.conf", "", "x\n"]]}
OK = {"task": "App config", "outcome": "ok"}


class ManagedRunner(RecordedRunner):
    """Recorded runs that also name the paths the role managed, as agent.runner does from the events."""

    managed: list[frozenset[str]]

    def run_playbooks(self, plan: RunPlan, mode: RunMode, settings: RunnerSettings, **kwargs: Any) -> RunResult:
        result = super().run_playbooks(plan, mode, settings, **kwargs)
        return replace(result, managed={"app": RolePaths("app", self.managed.pop(0))})


def test_the_recheck_after_an_apply_names_the_watch_set_not_the_check(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "origin", {
        "playbooks/app.yml": PLAYBOOK.format(role="app"),
        "inventory/hosts.yml": yaml.safe_dump({"all": {"children": {"app": {"hosts": {HOST: None}}}}})})
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"host": HOST, "source": {"url": str(repo.path)}, "mode": "enforce",
                                    "state_dir": str(tmp_path / "state"), "lock_wait": "0s"}))
    cfg = config_mod.load(path)
    runner = ManagedRunner(("app",), HOST)
    # The check of a copy that would create its file names only its directory; the recheck, the file.
    runner.runs = [{"mode": "check", "tasks": [CHANGED], "stats": {"changed": 1}},
                   {"mode": "apply", "tasks": [CHANGED], "stats": {"changed": 1}},
                   {"mode": "check", "tasks": [OK], "stats": {"ok": 1}}]
    runner.managed = [frozenset({"/etc/app"}), frozenset({"/etc/app/app.conf"}), frozenset({"/etc/app/app.conf"})]
    store = state_store(cfg)
    spooled: list[Report] = []
    parts = CycleParts(source=git_source(cfg), store=store, runner=runner, spool=spooled.append)
    report = Cycle(cfg, parts=parts).run(CycleOptions())
    assert report.status is Status.CORRECTED and runner.asked == ["check", "apply", "check"]
    assert read_set(store.paths) == {"app": RolePaths("app", frozenset({"/etc/app/app.conf"}))}


def test_blind_task_names_are_redacted_before_they_reach_watch_json_and_the_report(tmp_path: Path) -> None:
    """A blind task's name can hold a secret (a vaulted or templated value): watch.json (read by the
    daemon, shown by status and the report's watch block) gets it redacted like the report's names."""
    repo = make_repo(tmp_path / "origin", {
        "playbooks/app.yml": PLAYBOOK.format(role="app"),
        "inventory/hosts.yml": yaml.safe_dump({"all": {"children": {"app": {"hosts": {HOST: None}}}}})})
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"host": HOST, "source": {"url": str(repo.path)}, "mode": "enforce",
                                    "state_dir": str(tmp_path / "state"), "lock_wait": "0s",
                                    "redact": ["s3cret-[0-9]+"]}))
    cfg = config_mod.load(path)

    class BlindRunner(RecordedRunner):
        def run_playbooks(self, plan: RunPlan, mode: RunMode, settings: RunnerSettings,
                          **kwargs: Any) -> RunResult:
            result = super().run_playbooks(plan, mode, settings, **kwargs)
            blind = RolePaths("app", frozenset({"/etc/app/app.conf"}), ("Set the password to s3cret-42",))
            return replace(result, managed={"app": blind})

    runner = BlindRunner(("app",), HOST)
    runner.runs = [{"mode": "check", "tasks": [OK], "stats": {"ok": 1}}]
    store = state_store(cfg)
    parts = CycleParts(source=git_source(cfg), store=store, runner=runner, spool=[].append)
    Cycle(cfg, parts=parts).run(CycleOptions())
    text = store.paths.watch_set.read_text()
    assert "s3cret-42" not in text and "Set the password to " in text
    kept = read_set(store.paths)
    assert kept is not None and kept["app"].paths == {"/etc/app/app.conf"}  # paths stay as on disk


class CountingRunner(RecordedRunner):
    """Recorded runs that count the syntax checks the cycle asks for, and the roles of each."""

    syntax_checked: list[tuple[str, ...]]

    def syntax_errors(self, plan: RunPlan, settings: RunnerSettings) -> dict[str, str]:
        self.syntax_checked.append(plan.roles)
        return super().syntax_errors(plan, settings)


def test_a_watch_check_skips_the_syntax_check_its_commits_full_check_passed(tmp_path: Path) -> None:
    """The playbooks of a commit that all loaded (the full check's syntax check) load one by one too: a
    watch check of some of its roles runs no syntax check of its own (~1.5 CPU-s sooner, issue 21's time
    to detect). A role set whose full plan was not checked is checked."""
    repo = make_repo(tmp_path / "origin", {
        "playbooks/app.yml": PLAYBOOK.format(role="app"), "playbooks/web.yml": PLAYBOOK.format(role="web"),
        "inventory/hosts.yml": yaml.safe_dump({"all": {"children": {
            "app": {"hosts": {HOST: None}}, "web": {"hosts": {HOST: None}}}}})})
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"host": HOST, "source": {"url": str(repo.path)}, "mode": "detect",
                                    "state_dir": str(tmp_path / "state"), "lock_wait": "0s"}))
    cfg = config_mod.load(path)
    runner = CountingRunner(("app", "web"), HOST)
    runner.syntax_checked = []
    runner.runs = [{"mode": "check", "tasks": [OK], "stats": {"ok": 1}} for _ in range(3)]
    parts = CycleParts(source=git_source(cfg), store=state_store(cfg), runner=runner, spool=lambda r: None)
    # A watch check before any full check of the commit: its roles are checked.
    Cycle(cfg, parts=parts).run(CycleOptions(roles=("web",)))
    assert runner.syntax_checked == [("web",)]
    Cycle(cfg, parts=parts).run(CycleOptions())  # the full check: every role
    assert runner.syntax_checked == [("web",), ("app", "web")]
    report = Cycle(cfg, parts=parts).run(CycleOptions(roles=("app",)))
    assert report.roles == ("app",) and runner.syntax_checked == [("web",), ("app", "web")]
