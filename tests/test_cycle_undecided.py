"""A new commit C that fails before the rollout gate could decide (its rollout.yml, its plan, its syntax
check, a check that could not start) is reported as C's failure, and the host's last converged commit B
is enforced as while C is held (docs/rollout.md, "When C fails before the gate"). A real Cycle, a real
Git repo and state store; only the playbook runner is recorded (tests/test_cycle_cases.RecordedRunner),
so no Ansible runs here (tests/test_cycle_rollout_enforce.py runs it for real)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import config as config_mod
from agent import render
from agent.cycle import Cycle, CycleOptions
from agent.inventory import RunPlan
from agent.report import GateState, Phase, Report, Status, Trigger
from agent.runner import RunnerSettings
from agent.wiring import CycleParts, git_source, state_store
from tests.conftest import GitRepo, make_repo
from tests.test_cycle_cases import PLAYBOOK, RecordedRunner

HOST = "testhost"
ONE_WAVE = "version: 1\nwaves:\n  - name: all\n"  # the first wave proceeds without a collector
CHANGED = {"mode": "check", "tasks": [{"task": "App config", "outcome": "changed",
                                       "diffs": [["/srv/app.conf", "hand edit\n", "version=1\n"]]}],
           "stats": {"ok": 1, "changed": 1}}
APPLIED = {"mode": "apply", "tasks": [{"task": "App config", "outcome": "changed"}], "stats": {"ok": 1, "changed": 1}}
CLEAN = {"mode": "check", "tasks": [{"task": "App config", "outcome": "ok"}], "stats": {"ok": 1}}
CORRECT = [CHANGED, APPLIED, CLEAN]  # B's check, apply and recheck
NOT_STARTED = {"mode": "check", "status": "failed", "rc": 4, "recap_seen": False, "started": [], "tasks": [],
               "messages": ["ERROR! the role 'common' was not found in playbooks/roles"]}
SCHEDULED = CycleOptions(trigger=Trigger.SCHEDULE)
UNLOADABLE = "ERROR! conflicting action statements: copy, file (playbooks/app.yml line 5, column 7)"


@dataclass
class Runner(RecordedRunner):
    """The recorded runner; the playbooks of the commits in ``unloadable`` fail the syntax check."""

    unloadable: set[str] = field(default_factory=set)

    def syntax_errors(self, plan: RunPlan, settings: RunnerSettings) -> dict[str, str]:
        return {r: UNLOADABLE for r in plan.roles} if plan.commit in self.unloadable else {}


def break_rollout(repo: GitRepo, runner: Runner) -> str:
    return repo.commit({"rollout.yml": ONE_WAVE.replace("version: 1", "version: 2")}, "bad policy")


def rollout_not_yaml(repo: GitRepo, runner: Runner) -> str:
    return repo.commit({"rollout.yml": "waves: [\n"}, "policy not YAML")


def requirements_not_vendored(repo: GitRepo, runner: Runner) -> str:
    return repo.commit({"requirements.yml": "collections:\n  - name: community.general\n"}, "needs a collection")


def no_playbook_for_the_role(repo: GitRepo, runner: Runner) -> str:
    repo.git("mv", "playbooks/app.yml", "playbooks/web.yml")
    return repo.commit({}, "playbook renamed")


def every_role_unloadable(repo: GitRepo, runner: Runner) -> str:
    commit = repo.commit({"playbooks/app.yml": PLAYBOOK.format(role="app") + "# broken\n"}, "broken play")
    runner.unloadable.add(commit)
    return commit


@dataclass(frozen=True)
class Case:
    name: str
    make: Any  # (repo, runner) -> the new commit C
    c_runs: tuple[dict[str, Any], ...]  # what the cycle runs of C before it fails
    status: Status
    phase: Phase
    error: str  # in C's error, after "commit C: "


CASES = [
    Case("rollout.yml invalid", break_rollout, (CHANGED,), Status.ERROR, Phase.CHECK,
         "rollout.yml: version: must be 1, got 2"),
    Case("rollout.yml not YAML", rollout_not_yaml, (CHANGED,), Status.ERROR, Phase.CHECK, "rollout.yml: "),
    Case("requirements not vendored", requirements_not_vendored, (), Status.ERROR, Phase.PLAN,
         "requirements name collection community.general, not vendored"),
    Case("no playbook for the host's role", no_playbook_for_the_role, (), Status.ERROR, Phase.PLAN,
         "host 'testhost' has no role: none of its groups (app) has a playbook"),
    Case("every role unloadable", every_role_unloadable, (), Status.FAILED, Phase.PLAN,
         f"role 'app' cannot be loaded, so it did not run: {UNLOADABLE}"),
    Case("check could not start", lambda repo, runner: repo.commit({"playbooks/app.yml": PLAYBOOK.format(
        role="app") + "# v2\n"}, "v2"), (NOT_STARTED,), Status.ERROR, Phase.CHECK,
         "ansible check failed before running tasks: ERROR! the role 'common' was not found"),
]


def setup_repo(tmp_path: Path, **config: Any) -> tuple[GitRepo, config_mod.AgentConfig]:
    repo = make_repo(tmp_path / "origin", {
        "playbooks/app.yml": PLAYBOOK.format(role="app"), "rollout.yml": ONE_WAVE,
        "inventory/hosts.yml": yaml.safe_dump({"all": {"children": {"app": {"hosts": {HOST: None}}}}})})
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"host": HOST, "source": {"url": str(repo.path)},
                                    "state_dir": str(tmp_path / "state"), "lock_wait": "0s", **config}))
    return repo, config_mod.load(path)


def run(cfg: config_mod.AgentConfig, runner: Runner, runs: list[dict[str, Any]],
        options: CycleOptions = SCHEDULED) -> tuple[Report, list[str]]:
    runner.runs, runner.asked = list(runs), []
    parts = CycleParts(source=git_source(cfg), store=state_store(cfg), runner=runner, spool=lambda r: None)
    report = Cycle(cfg, parts=parts).run(options)
    assert not runner.runs, f"the cycle did not ask for every recorded run: {runner.runs}"
    return report, runner.asked


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_commit_failing_before_the_gate_is_reported_and_the_converged_one_enforced(case: Case, tmp_path):
    repo, cfg = setup_repo(tmp_path)
    runner = Runner(("app",), HOST)
    converged, asked = run(cfg, runner, CORRECT)
    assert converged.status is Status.CORRECTED and asked == ["check", "apply", "check"]
    b = converged.source.commit
    assert b is not None
    c = case.make(repo, runner)

    report, asked = run(cfg, runner, [*case.c_runs, *CORRECT])
    assert asked == [r["mode"] for r in case.c_runs] + ["check", "apply", "check"]
    # C's failure, truthfully: its status, the phase it reached, its error naming it
    assert report.source.commit == c and (report.status, report.phase_reached) == (case.status, case.phase)
    assert report.apply is None
    assert report.errors[0].message.startswith(f"commit {c[:12]}: {case.error}"), report.errors
    assert len(report.errors) == 1
    # ... and B enforced: corrected, in the rollout block
    info = report.rollout
    assert info is not None and info.gate is GateState.UNDECIDED and (info.wave, info.policy_digest) == ("", "")
    assert info.reason == f"not decided: commit {c[:12]} failed at {case.phase.value}"
    assert info.enforcing_commit == b
    assert info.checked_at == (report.started_at if case.c_runs else None)
    enforced = info.enforced
    assert enforced is not None and (enforced.commit, enforced.status) == (b, Status.CORRECTED)
    assert enforced.reason == "corrected 1 drifted task(s)"
    assert [(d.task, d.kind.value) for d in enforced.drift] == [("App config", "corrective")]
    assert enforced.apply is not None and enforced.apply.changed == 1
    assert render.rollout_text(report) == (f"rollout: not decided: commit {c[:12]} failed at {case.phase.value} "
                                           f"(enforcing {b[:12]}: corrected 1 drifted task(s))")

    # The next cycle: C still fails; B, now in sync, is checked again (and C is still not converged).
    again, asked = run(cfg, runner, [*case.c_runs, CLEAN])
    assert asked == [r["mode"] for r in case.c_runs] + ["check"]
    assert again.status is case.status and again.rollout is not None and again.rollout.enforced is not None
    assert (again.rollout.enforced.commit, again.rollout.enforced.status) == (b, Status.IN_SYNC)


def test_a_failure_of_the_converged_commit_while_enforcing_is_reported_too(tmp_path):
    """B enforced after C failed: B's own failure is named as B's, and C's status stays C's."""
    repo, cfg = setup_repo(tmp_path)
    runner = Runner(("app",), HOST)
    b = run(cfg, runner, CORRECT)[0].source.commit
    assert b is not None
    c = break_rollout(repo, runner)
    report, asked = run(cfg, runner, [CHANGED, NOT_STARTED])
    assert asked == ["check", "check"] and report.status is Status.ERROR
    assert [e.message for e in report.errors] == [
        f"commit {c[:12]}: rollout.yml: version: must be 1, got 2",
        f"enforcing converged commit {b[:12]}: ansible check failed before running tasks: "
        "ERROR! the role 'common' was not found in playbooks/roles"]
    assert report.rollout is not None and report.rollout.enforced is not None
    assert (report.rollout.enforced.commit, report.rollout.enforced.status) == (b, Status.ERROR)


def test_not_this_class_nothing_is_enforced(tmp_path):
    """Outside the class, the report is as before: a new host has nothing to enforce and says so; a
    check-only run and detect mode apply nothing; a commit the source refuses (a rewind) stops the cycle at
    verify, before anything of it or of B runs (docs/rollout.md)."""
    repo, cfg = setup_repo(tmp_path)
    runner = Runner(("app",), HOST)
    first = break_rollout(repo, runner)  # a new host whose first commit is broken
    new, asked = run(cfg, runner, [CHANGED])
    assert asked == ["check"] and new.status is Status.ERROR and new.rollout is not None
    assert new.rollout.gate is GateState.UNDECIDED and new.rollout.enforcing_commit is None
    assert new.rollout.enforced is not None and new.rollout.enforced.commit is None
    assert new.rollout.enforced.reason == "no converged commit yet: nothing to enforce"
    assert [e.message for e in new.errors] == [f"commit {first[:12]}: rollout.yml: version: must be 1, got 2"]

    b = repo.commit({"rollout.yml": ONE_WAVE}, "fixed")
    assert run(cfg, runner, CORRECT)[0].status is Status.CORRECTED
    c = break_rollout(repo, runner)
    check_only, asked = run(cfg, runner, [CHANGED], CycleOptions(trigger=Trigger.MANUAL, check_only=True))
    assert asked == ["check"] and check_only.status is Status.ERROR and check_only.rollout is None
    assert [e.message for e in check_only.errors] == ["rollout.yml: version: must be 1, got 2"]
    detect = config_mod.load(tmp_path / "agent.yaml")
    detect = type(detect)(**{**detect.__dict__, "mode": config_mod.Mode.DETECT})
    report, asked = run(detect, runner, [CHANGED])
    assert asked == ["check"] and report.rollout is None and report.source.commit == c

    enforced, asked = run(cfg, runner, [CHANGED, CLEAN])  # enforce mode: B checked, C is the last commit
    assert asked == ["check", "check"] and enforced.rollout is not None and enforced.rollout.enforced is not None
    assert enforced.rollout.enforced.status is Status.IN_SYNC
    repo.git("reset", "-q", "--hard", b)  # C replaced by a commit that does not descend from it
    rewound = repo.commit({"playbooks/app.yml": PLAYBOOK.format(role="app") + "# other\n"}, "rewritten")
    refused, asked = run(cfg, runner, [])
    assert asked == [] and refused.status is Status.ERROR and refused.phase_reached is Phase.VERIFY
    assert refused.rollout is None and rewound[:12] in refused.errors[0].message


def test_without_rollout_yml_a_converged_commit_is_enforced_and_a_new_host_reports_as_before(tmp_path):
    """No rollout.yml anywhere: a new host whose commit fails at its plan gets the report it always got
    (no rollout block); once it converged to B, a failing C leaves B enforced all the same."""
    repo, cfg = setup_repo(tmp_path)
    repo.git("rm", "-q", "rollout.yml")
    repo.commit({"requirements.yml": "collections:\n  - name: community.general\n"}, "no policy, broken")
    runner = Runner(("app",), HOST)
    new, asked = run(cfg, runner, [])
    assert asked == [] and (new.status, new.phase_reached) == (Status.ERROR, Phase.PLAN) and new.rollout is None
    assert new.errors[0].message.startswith("requirements name collection community.general, not vendored")

    repo.git("rm", "-q", "requirements.yml")
    b = repo.commit({}, "fixed")
    assert run(cfg, runner, CORRECT)[0].status is Status.CORRECTED
    c = every_role_unloadable(repo, runner)
    report, asked = run(cfg, runner, CORRECT)
    assert asked == ["check", "apply", "check"] and report.source.commit == c
    assert (report.status, report.phase_reached) == (Status.FAILED, Phase.PLAN)
    assert report.rollout is not None and report.rollout.gate is GateState.UNDECIDED
    assert report.rollout.enforced is not None
    assert (report.rollout.enforced.commit, report.rollout.enforced.status) == (b, Status.CORRECTED)
