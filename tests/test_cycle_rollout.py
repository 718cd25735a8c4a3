"""The cycle's rollout gate against a real collector (a `gitops-collector serve` process on SQLite): a
real Cycle with a real Git repo holding rollout.yml, a real state store, the real Sender's rollout
request; only the playbook runner is recorded (tests/test_cycle_cases.RecordedRunner), so no Ansible runs.

One collector and one repo are shared by the cases below, in order (each cycle costs ~0.1 CPU-s)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent import config as config_mod
from agent import render
from agent.cycle import Cycle, CycleOptions
from agent.inventory import RunPlan
from agent.report import (
    GateState,
    Report,
    RolloutInfo,
    Status,
    Trigger,
    WaveSize,
    format_time,
    parse_time,
    to_json,
)
from agent.rollout import parse_policy
from agent.runner import RunnerSettings
from agent.wiring import CycleParts, cycle_parts, git_source, state_store
from tests.conftest import make_repo
from tests.factory import make_report
from tests.live_collector import CollectorProcess, fresh_database, token
from tests.test_cycle_cases import PLAYBOOK, RecordedRunner

HOST, CANARY = "testhost", "canary1"
ROLLOUT = """\
version: 1
waves:
  - name: canary
    groups: [canary]
  - name: rest
"""
CHANGED = {"mode": "check", "tasks": [{"task": "App config", "outcome": "changed",
                                       "diffs": [["/srv/app.conf", "version=1\n", "version=2\n"]]}],
           "stats": {"ok": 1, "changed": 1}}
APPLIED = {"mode": "apply", "tasks": [{"task": "App config", "outcome": "changed"}], "stats": {"ok": 1, "changed": 1}}
CLEAN = {"mode": "check", "tasks": [{"task": "App config", "outcome": "ok"}], "stats": {"ok": 1}}


class FleetRunner(RecordedRunner):
    """The recorded runner, with a second host in the inventory's group `canary`."""

    def inventory_graph(self, inventory: Path, project_dir: Path, settings: RunnerSettings) -> str:
        return super().inventory_graph(inventory, project_dir, settings) + f"  |--@canary:\n  |  |--{CANARY}\n"

    def syntax_errors(self, plan: RunPlan, settings: RunnerSettings) -> dict[str, str]:
        return {}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("rollout")
    with fresh_database("sqlite", tmp) as db_url:
        from agent.collector import db

        engine = db.create(db_url)
        db.prepare(engine)
        engine.dispose()
        secrets = {h: token(db_url, h) for h in (HOST, CANARY)}
        collector = CollectorProcess(db_url, None, "--rollout-cache", "0s").start()
        try:
            (tmp / "token").write_text(secrets[HOST] + "\n")
            (tmp / "token").chmod(0o600)
            repo = make_repo(tmp / "origin", {
                "playbooks/app.yml": PLAYBOOK.format(role="app"), "rollout.yml": ROLLOUT,
                "inventory/hosts.yml": yaml.safe_dump({"all": {"children": {
                    "app": {"hosts": {HOST: None}}, "canary": {"hosts": {CANARY: None}}}}})})
            config = tmp / "agent.yaml"
            config.write_text(yaml.safe_dump({
                "host": HOST, "source": {"url": str(repo.path)}, "state_dir": str(tmp / "state"),
                "lock_wait": "0s", "collector": {"url": collector.url, "token_file": str(tmp / "token")}}))
            yield {"cfg": config_mod.load(config), "config": config, "collector": collector, "secrets": secrets, "repo": repo}
        finally:
            collector.stop()


def cycle(setup: dict[str, Any], runs: list[dict[str, Any]], *, collector: bool = True,
          trigger: Trigger = Trigger.MANUAL) -> tuple[Report, list[str]]:
    cfg = setup["cfg"]
    runner = FleetRunner(("app",), HOST, runs=list(runs))
    real = cycle_parts(cfg)  # the real collector client, as the CLI and the daemon build it
    parts = CycleParts(source=git_source(cfg), store=state_store(cfg), runner=runner, spool=lambda r: None,
                       ask_rollout=real.ask_rollout if collector else None)
    report = Cycle(cfg, parts=parts).run(CycleOptions(trigger=trigger))
    assert not runner.runs, f"the cycle did not ask for every recorded run: {runner.runs}"
    return report, runner.asked


def send_canary(setup: dict[str, Any], commit: str, status: Status) -> None:
    policy = parse_policy(ROLLOUT)
    info = RolloutInfo(wave="canary", gate=GateState.ALLOWED, reason="wave canary open",
                       policy_digest=policy.digest(), wave_sizes=(WaveSize("canary", 1), WaveSize("rest", 1)))
    report = make_report(CANARY, status=status, commit=commit, rollout=info, finished_at=datetime.now(UTC),
                         run_id=str(uuid.uuid4()), drift=())
    response = httpx.post(f"{setup['collector'].url}/api/v1/reports", content=to_json(report),
                          headers={"Authorization": f"Bearer {setup['secrets'][CANARY]}",
                                   "Content-Type": "application/json"})
    assert response.status_code == 201, response.text


def test_a_new_commit_waits_for_the_canary_applies_and_a_halted_next_commit_is_held(setup):
    # no collector configured: the host's wave (rest, the second) holds new commits
    held, asked = cycle(setup, [CHANGED], collector=False)
    assert asked == ["check"] and held.status is Status.DRIFTED
    assert held.rollout is not None and held.rollout.gate is GateState.UNREACHABLE
    assert held.rollout.reason == ("waiting: collector unreachable, wave rest holds new commits "
                                   "(hold-after-first-wave)")
    # a new host: nothing converged, so nothing to enforce (it says so), and the held commit is checked
    # on every cycle (there is nothing else to check)
    assert held.rollout.enforced is not None and held.rollout.enforced.commit is None
    assert held.rollout.enforced.reason == "no converged commit yet: nothing to enforce"
    assert render.rollout_text(held) == ("rollout: wave rest, waiting: collector unreachable, wave rest holds "
                                         "new commits (hold-after-first-wave) (no converged commit yet: nothing "
                                         "to enforce)")
    again, asked = cycle(setup, [CHANGED], collector=False, trigger=Trigger.SCHEDULE)
    assert asked == ["check"] and again.rollout is not None and again.rollout.checked_at == again.started_at
    # the collector is asked (and learns the policy): the canary has not converged yet
    waiting, asked = cycle(setup, [CHANGED])
    assert asked == ["check"] and waiting.status is Status.DRIFTED
    assert waiting.rollout is not None and waiting.rollout.wave == "rest"
    assert (waiting.rollout.gate, waiting.rollout.reason) == (GateState.WAITING,
                                                              "waiting: wave canary 0/1 converged, needs 100%")
    assert [(w.name, w.size) for w in waiting.rollout.wave_sizes] == [("canary", 1), ("rest", 1)]
    # the canary converges on the commit: the next cycle applies
    send_canary(setup, waiting.source.commit, Status.IN_SYNC)
    applied, asked = cycle(setup, [CHANGED, APPLIED, CLEAN])
    assert asked == ["check", "apply", "check"] and applied.status is Status.CORRECTED  # the recheck
    assert applied.rollout is not None and applied.rollout.gate is GateState.ALLOWED
    assert applied.rollout.enforcing_commit is None
    a_halted_rollout_holds_the_next_commit(setup, converged=applied.source.commit)


def a_halted_rollout_holds_the_next_commit(setup: dict[str, Any], converged: str) -> None:
    """The story's second part (one test, so that no test depends on another having run before it)."""
    repo = setup["repo"]
    repo.commit({"playbooks/app.yml": PLAYBOOK.format(role="app") + "# v2\n"}, "second")
    commit = repo.git("rev-parse", "HEAD").strip()
    send_canary(setup, commit, Status.FAILED)  # the canary failed the new commit: the collector halts it
    # C is checked and held; the converged commit is checked too, and its corrective drift corrected
    held, asked = cycle(setup, [CHANGED, CHANGED, APPLIED, CLEAN], trigger=Trigger.SCHEDULE)
    assert asked == ["check", "check", "apply", "check"] and held.source.commit == commit
    assert held.status is Status.DRIFTED and held.apply is None
    assert [(d.task, d.kind.value) for d in held.drift] == [("App config", "intentional")]
    assert held.rollout is not None and held.rollout.gate is GateState.HALTED
    assert held.rollout.reason == "halted: wave canary: 1 of 1 failed, at most 0 allowed"
    assert held.rollout.enforcing_commit == converged and held.rollout.checked_at == held.started_at
    enforced = held.rollout.enforced
    assert enforced is not None and (enforced.commit, enforced.status) == (converged, Status.CORRECTED)
    assert [(d.task, d.kind.value) for d in enforced.drift] == [("App config", "corrective")]
    assert enforced.apply is not None and enforced.apply.changed == 1
    # `gitops-agent status` says the same (it reads the last report of the state directory)
    assert render.rollout_text(held) == (f"rollout: wave rest, halted: wave canary: 1 of 1 failed, at most 0 "
                                         f"allowed (enforcing {converged[:12]}: corrected 1 drifted task(s))")
    out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(setup["config"])],
                         capture_output=True, text=True, check=False).stdout
    assert render.rollout_text(held) in out.splitlines()
    a_held_commit_is_checked_again_only_when_the_gate_changes(setup, held, converged)


def a_held_commit_is_checked_again_only_when_the_gate_changes(setup: dict[str, Any], held: Report,
                                                              converged: str) -> None:
    commit, checked_at = held.source.commit, parse_time(format_time(held.started_at))
    # the same answer on the next scheduled cycle: only the converged commit is checked
    again, asked = cycle(setup, [CLEAN], trigger=Trigger.SCHEDULE)
    assert asked == ["check"] and again.source.commit == commit and again.status is Status.DRIFTED
    assert again.drift == held.drift and again.rollout is not None
    assert again.rollout.checked_at == checked_at and again.rollout.reason == held.rollout.reason  # type: ignore[union-attr]
    assert again.rollout.enforced is not None and again.rollout.enforced.status is Status.IN_SYNC
    assert again.rollout.enforced.commit == converged
    assert f"{commit[:12]} last checked {checked_at:%Y-%m-%dT%H:%M:%SZ}" in (render.rollout_text(again) or "")
    # a manual run checks C again
    manual, asked = cycle(setup, [CHANGED, CLEAN])
    assert asked == ["check", "check"] and manual.rollout is not None
    assert manual.rollout.checked_at == manual.started_at
    # the gate's answer changes (the collector is not asked: unreachable): C is checked again
    changed, asked = cycle(setup, [CHANGED, CLEAN], collector=False, trigger=Trigger.SCHEDULE)
    assert asked == ["check", "check"] and changed.rollout is not None
    assert changed.rollout.gate is GateState.UNREACHABLE and changed.rollout.checked_at == changed.started_at
    # and then stays unchecked while that answer holds
    same, asked = cycle(setup, [CLEAN], collector=False, trigger=Trigger.SCHEDULE)
    assert asked == ["check"] and same.rollout is not None
    assert same.rollout.checked_at == parse_time(format_time(changed.started_at))


def test_a_broken_policy_is_a_failed_plan_naming_the_key(setup):
    repo = setup["repo"]
    repo.commit({"rollout.yml": ROLLOUT.replace("version: 1", "version: 2")}, "bad policy")
    report, asked = cycle(setup, [CHANGED])
    assert asked == ["check"] and report.status is Status.ERROR
    assert [e.message for e in report.errors] == ["rollout.yml: version: must be 1, got 2"]


WINDOWED = """\
version: 1
on_collector_unreachable: {unreachable}
waves:
  - name: all
windows:
  - name: nights
    roles: [app]
    days: [mon]
    start: "01:00"
    duration: 1h
    timezone: UTC
    corrective: window
"""


def test_a_window_holds_the_converged_commits_corrective_apply_while_a_new_commit_is_held(tmp_path):
    """The converged commit's own policy governs its corrective apply: `corrective: window` outside the
    window leaves its drift reported, not corrected (no collector: the gate decides as if unreachable)."""
    repo = make_repo(tmp_path / "origin", {
        "playbooks/app.yml": PLAYBOOK.format(role="app"),
        "rollout.yml": WINDOWED.format(unreachable="hold-after-first-wave"),
        "inventory/hosts.yml": yaml.safe_dump({"all": {"children": {"app": {"hosts": {HOST: None}}}}})})
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"host": HOST, "source": {"url": str(repo.path)},
                                    "state_dir": str(tmp_path / "state"), "lock_wait": "0s"}))
    cfg = config_mod.load(path)

    def run(at: datetime, runs: list[dict[str, Any]]) -> tuple[Report, list[str]]:
        runner = FleetRunner(("app",), HOST, runs=list(runs))
        parts = CycleParts(source=git_source(cfg), store=state_store(cfg), runner=runner, spool=lambda r: None)
        report = Cycle(cfg, parts=parts, clock=lambda: at).run(CycleOptions(trigger=Trigger.SCHEDULE))
        assert not runner.runs, f"the cycle did not ask for every recorded run: {runner.runs}"
        return report, runner.asked

    inside, outside = datetime(2027, 1, 4, 1, 30, tzinfo=UTC), datetime(2027, 1, 4, 3, 0, tzinfo=UTC)
    applied, asked = run(inside, [CHANGED, APPLIED, CLEAN])  # the first wave proceeds, in the window
    assert asked == ["check", "apply", "check"] and applied.status is Status.CORRECTED
    converged = applied.source.commit
    repo.commit({"rollout.yml": WINDOWED.format(unreachable="hold-all"), "playbooks/app.yml":
                 PLAYBOOK.format(role="app") + "# v2\n"}, "second")
    held, asked = run(outside, [CHANGED, CHANGED])  # C's check, then the converged commit's: no apply
    assert asked == ["check", "check"] and held.status is Status.DRIFTED
    assert held.rollout is not None and held.rollout.gate is GateState.UNREACHABLE
    enforced = held.rollout.enforced
    assert enforced is not None and (enforced.commit, enforced.status) == (converged, Status.DRIFTED)
    assert enforced.reason == "waiting: window nights opens Mon 2027-01-11 01:00 UTC"
    assert [(d.task, d.kind.value) for d in enforced.drift] == [("App config", "corrective")]
    assert enforced.apply is None


def test_the_held_commit_in_state_json_round_trips_and_a_bad_one_is_named():
    from agent.state import AgentState, HeldCommit, state_from_json, state_to_json

    state = AgentState(held=HeldCommit("c" * 40, "halted: halted: by hand", "2026-11-30T08:00:00.000Z", "p" * 64))
    assert state_from_json(json.loads(json.dumps(state_to_json(state)))) == state
    assert state_from_json({}).held is None
    for bad, message in [({"held": []}, "held: expected an object"),
                         ({"held": {"commit": "c", "gate": "g", "checked_at": "noon"}}, "held.checked_at: 'noon'"),
                         ({"held": {"gate": "g", "checked_at": "2026-11-30T08:00:00Z"}}, "held.commit: expected")]:
        with pytest.raises(ValueError, match=message):
            state_from_json(bad)
