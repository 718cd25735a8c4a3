"""Data-driven cycles without Ansible: each folder under data/cycles holds what the playbook runs return
(case.json: the set-up and, per cycle, its check / apply / recheck results) and what the reports must say
(expected.json: per cycle, status, phase, drift, errors, exit code, ...).

A real `Cycle` runs each: a real local Git repository as its source, a real StateStore in tmp_path, the
real journal and outbox; only the playbook runner is recorded (RecordedRunner below). Real Ansible runs of
the same paths are in test_cycle.py, test_cli_*.py and tests/semantics.

case.json:
  roles          the host's roles (playbooks/<role>.yml in the repo; the inventory puts the host in
                 one group per role), default ["app"]
  inventory_host the host the inventory names (default: the configured one)
  config         overrides of the agent configuration (e.g. {"mode": "detect"})
  pause          a pause written before the first cycle (reason, checks_too)
  cycles         a list; each: options ({"check_only", "refusal"}), syntax_errors ({role: error}),
                 runs: the RunResults in the order the cycle asks for them (check, apply, recheck):
                 {mode, status, rc, recap_seen, started, stats, messages, no_hosts, tasks}; a task is
                 TaskResult's fields by name (execution defaults to one per task and item; diffs as [path, before, after]; role defaults to the first role, play to "p");
                 git: "amend" rewrites the ref's last commit before the cycle.
expected.json: a list, one per cycle: status, phase_reached, exit_code, drift ([task, kind] pairs),
  errors ([phase, text the message contains] pairs), and optionally apply_changed, apply_failed
  (task names), warnings_contain.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import config as config_mod
from agent import delivery
from agent.cli_cycle import _run_exit_code
from agent.cycle import Cycle, CycleOptions
from agent.events import NoHostsPlay, Outcome, ParsedRun, TaskResult
from agent.inventory import RunPlan
from agent.progress import Progress
from agent.report import Diff, Pause, Report, Stats
from agent.runner import RunMode, RunnerSettings, RunResult, RunStatus
from agent.wiring import CycleParts, git_source, state_store
from tests.conftest import make_repo

CASES = sorted(p for p in (Path(__file__).parent / "data" / "cycles").iterdir() if p.is_dir())
HOST = "testhost"
PLAYBOOK = "- name: {role}\n  hosts: {role}\n  gather_facts: false\n  tasks: []\n"


def task_from(data: dict[str, Any], role: str) -> TaskResult:
    fields = {"role": role, "play": "p", "module": "copy", "execution": f"{data['task']}/{data.get('item')}",
              **data}
    fields["outcome"] = Outcome(fields["outcome"])
    fields["diffs"] = tuple(Diff(*d) for d in fields.get("diffs", ()))
    return TaskResult(**fields)


def run_from(data: dict[str, Any], role: str) -> RunResult:
    parsed = ParsedRun(tasks=tuple(task_from(t, role) for t in data.get("tasks", ())),
                       stats=Stats(**data.get("stats", {})), messages=tuple(data.get("messages", ())),
                       no_hosts=tuple(NoHostsPlay(**p) for p in data.get("no_hosts", ())),
                       recap_seen=data.get("recap_seen", True), started=tuple(data.get("started", (role,))))
    return RunResult(mode=RunMode(data["mode"]), status=RunStatus(data.get("status", "successful")), rc=data.get("rc", 0),
                     parsed=parsed, duration_s=0.1)


@dataclass
class RecordedRunner:
    """The PlaybookRunner of agent.wiring, answering from a case's recorded results."""

    roles: tuple[str, ...]
    inventory_host: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def inventory_graph(self, inventory: Path, project_dir: Path, settings: RunnerSettings) -> str:
        groups = "".join(f"  |--@{role}:\n  |  |--{self.inventory_host}\n" for role in self.roles)
        return f"@all:\n  |--@ungrouped:\n{groups}"

    def syntax_errors(self, plan: RunPlan, settings: RunnerSettings) -> dict[str, str]:
        return {r: e for r, e in self.broken.items() if r in plan.roles}

    def run_playbooks(self, plan: RunPlan, mode: RunMode, settings: RunnerSettings, *,
                      cancel: Callable[[], bool], playbooks: tuple[Path, ...] | None = None,
                      progress: Progress | None = None) -> RunResult:
        assert self.runs, f"the cycle asked for a {mode.value} run the case does not record"
        data = self.runs.pop(0)
        assert data["mode"] == mode.value, f"the cycle asked for {mode.value}, the case has {data['mode']}"
        self.asked.append(mode.value)
        return run_from(data, plan.roles[0])


def summary(report: Report, expected: dict[str, Any]) -> dict[str, Any]:
    got: dict[str, Any] = {
        "status": report.status.value, "phase_reached": report.phase_reached.value,
        "exit_code": _run_exit_code(report),
        "drift": [[d.task, d.kind.value] for d in report.drift],
        "errors": [[e.phase.value, next((x for p, x in expected.get("errors", ())
                                         if p == e.phase.value and x in e.message), e.message)]
                   for e in report.errors]}
    if "apply_changed" in expected:
        got["apply_changed"] = report.apply.changed if report.apply else None
    if "apply_failed" in expected:
        got["apply_failed"] = [t.task for t in report.apply.failed_tasks] if report.apply else None
    if "warnings_contain" in expected:
        got["warnings_contain"] = [w for w in expected["warnings_contain"]
                                   if any(w in x for x in report.warnings)]
    return got


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cycle_case(case: Path, tmp_path: Path) -> None:
    setup = json.loads((case / "case.json").read_text())
    expected = json.loads((case / "expected.json").read_text())
    roles = tuple(setup.get("roles", ["app"]))
    repo = make_repo(tmp_path / "origin", {
        **{f"playbooks/{r}.yml": PLAYBOOK.format(role=r) for r in roles},
        "inventory/hosts.yml": yaml.safe_dump({"all": {"children": {r: {"hosts": {HOST: None}} for r in roles}}})})
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"host": HOST, "source": {"url": str(repo.path)},
                                    "state_dir": str(tmp_path / "state"), "lock_wait": "0s",
                                    "collector": {"url": "http://127.0.0.1:9", "token_file": "token"},
                                    **setup.get("config", {})}))
    cfg = config_mod.load(path)
    runner = RecordedRunner(roles, setup.get("inventory_host", HOST))
    store = state_store(cfg)
    if "pause" in setup:
        store.ensure()
        store.write_pause(Pause(since=datetime(2026, 1, 1, tzinfo=UTC), **setup["pause"]))
    assert len(setup["cycles"]) == len(expected), "one expected.json entry per cycle"
    for number, (cycle_in, want) in enumerate(zip(setup["cycles"], expected, strict=True), 1):
        runner.runs, runner.broken = list(cycle_in.get("runs", ())), cycle_in.get("syntax_errors", {})
        if cycle_in.get("git") == "amend":  # the ref's history rewritten since the last cycle
            repo.git("commit", "-q", "--amend", "-m", "rewritten")
        spooled: list[Report] = []
        parts = CycleParts(source=git_source(cfg), store=store, runner=runner, spool=spooled.append)
        report = Cycle(cfg, parts=parts).run(CycleOptions(**cycle_in.get("options", {})))
        assert summary(report, want) == want, f"cycle {number} of {case.name}"
        assert not runner.runs, f"cycle {number} did not ask for every recorded run: {runner.runs}"
        assert [r.run_id for r in spooled] == [report.run_id]  # the outbox took it, once
        assert (last := store.last_report()) is not None and last.run_id == report.run_id
        assert delivery.outbox(cfg).pending() == []  # the spool given was used, not the real outbox


def test_every_status_and_phase_has_a_case() -> None:
    seen = [(e["status"], e["phase_reached"]) for c in CASES
            for e in json.loads((c / "expected.json").read_text())]
    assert {s for s, _ in seen} == {"in_sync", "drifted", "paused", "corrected", "failed", "error"}
    assert {p for _, p in seen} == {"fetch", "verify", "plan", "check", "apply", "recheck", "done"}
