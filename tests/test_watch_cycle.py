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
