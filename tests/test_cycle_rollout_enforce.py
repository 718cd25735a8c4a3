"""While the rollout gate holds a new commit, the host keeps enforcing its last converged commit: real
Ansible (ansible_connection=local, every path under a tmp target_root), a real Git repo, a real Cycle
whose collector is configured but unreachable (a closed port on 127.0.0.1). docs/rollout.md.

One story, 14 ansible-playbook runs in all: a new host holds and has nothing to enforce (1); the first
wave applies the converged commit A (3); the next commit C is held while a hand edit of A's file is
corrected back to A's content, not C's, under the linear strategy (4); the next scheduled cycle does not
check C again and checks A only, under mitogen (1); a commit D with a broken rollout.yml fails at the gate
while a hand edit of A's file is corrected again (4); a commit E whose inventory does not parse fails at
its plan while A is checked, in sync (1)."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import config as config_mod
from agent import render
from agent.config import AgentConfig
from agent.cycle import Cycle, CycleOptions
from agent.report import GateState, Report, Status, Trigger, format_time, parse_time
from agent.wiring import CycleParts, cycle_parts
from tests.conftest import APP_PLAYBOOK, make_repo

# heavy: 14 Ansible runs (about 75 s); make test-heavy runs it (docs/testing.md)
pytestmark = [pytest.mark.ansible, pytest.mark.heavy]

HOST = "testhost"
HOLD_ALL = """\
version: 1
on_collector_unreachable: hold-all
waves:
  - name: canary
    groups: [canary]
  - name: rest
"""
FIRST_WAVE_PROCEEDS = HOLD_ALL.replace("hold-all", "hold-after-first-wave")


def inventory(version: str) -> str:
    return yaml.safe_dump({"all": {"children": {
        "app": {"hosts": {HOST: None}, "vars": {"app_version": version}},
        "canary": {"hosts": {HOST: None}}}}})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: a connection is refused at once


def cycle(cfg: AgentConfig, trigger: Trigger = Trigger.SCHEDULE) -> Report:
    real = cycle_parts(cfg)  # the real runner and the real collector client, as the CLI builds them
    parts = CycleParts(source=real.source, store=real.store, runner=real.runner, spool=lambda r: None,
                       ask_rollout=real.ask_rollout)
    return Cycle(cfg, parts=parts).run(CycleOptions(trigger=trigger))


def kinds(items: Any) -> list[tuple[str, str]]:
    return [(d.task, d.kind.value) for d in items]


def test_a_held_commit_keeps_the_converged_one_enforced_with_the_collector_unreachable(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "token").write_text("t" * 32 + "\n")
    (tmp_path / "token").chmod(0o600)
    repo = make_repo(tmp_path / "origin", {"playbooks/app.yml": APP_PLAYBOOK, "rollout.yml": HOLD_ALL,
                                           "inventory/hosts.yml": inventory("1")})
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump({
        "host": HOST, "source": {"url": str(repo.path)}, "state_dir": str(tmp_path / "state"),
        "extra_vars": {"target_root": str(root)}, "lock_wait": "0s", "schedule": {"timeout": "300s"},
        "collector": {"url": f"http://127.0.0.1:{closed_port()}", "token_file": str(tmp_path / "token")}}))
    mitogen = config_mod.load(tmp_path / "agent.yaml")
    assert mitogen.ansible.strategy == "mitogen"
    linear = replace(mitogen, ansible=replace(mitogen.ansible, strategy="linear"))

    # 1. A new host, every wave holding while the collector is down: it converged to nothing, so there
    #    is nothing to enforce, and it says so.
    new = cycle(mitogen)
    assert new.status is Status.DRIFTED and new.rollout is not None
    assert new.rollout.gate is GateState.UNREACHABLE and new.rollout.enforcing_commit is None
    assert new.rollout.enforced is not None and new.rollout.enforced.commit is None
    assert new.rollout.enforced.reason == "no converged commit yet: nothing to enforce"
    assert not (root / "app.conf").exists()

    # 2. A: the host's wave is the first, which proceeds without the collector: applied, converged.
    converged = repo.commit({"rollout.yml": FIRST_WAVE_PROCEEDS}, "first wave proceeds")
    applied = cycle(mitogen)
    assert applied.status is Status.CORRECTED and applied.rollout is not None
    assert applied.rollout.gate is GateState.ALLOWED and applied.rollout.enforced is None
    assert (root / "app.conf").read_text() == "version=1\n"

    # 3. C changes the file and holds every wave; a hand edit of A's file meanwhile is corrected back to
    #    A's content (not C's), while C is checked and reported as held.
    held_commit = repo.commit({"rollout.yml": HOLD_ALL, "inventory/hosts.yml": inventory("2")}, "app 2")
    (root / "app.conf").write_text("hand edit\n")
    held = cycle(linear)
    assert (root / "app.conf").read_text() == "version=1\n"
    assert held.source.commit == held_commit and held.status is Status.DRIFTED and held.apply is None
    assert kinds(held.drift) == [("App config", "intentional")]
    assert held.drift[0].diffs[0].after == "version=2\n"
    info = held.rollout
    assert info is not None and info.gate is GateState.UNREACHABLE
    assert info.reason == "waiting: collector unreachable, wave canary holds new commits (hold-all)"
    assert info.checked_at == held.started_at and info.enforcing_commit == converged
    enforced = info.enforced
    assert enforced is not None and (enforced.commit, enforced.status) == (converged, Status.CORRECTED)
    assert enforced.reason == "corrected 1 drifted task(s)"
    assert kinds(enforced.drift) == [("App config", "corrective")]
    assert (enforced.drift[0].diffs[0].before, enforced.drift[0].diffs[0].after) == ("hand edit\n",
                                                                                     "version=1\n")
    assert enforced.apply is not None and enforced.apply.changed == 1

    # 4. The next scheduled cycle: the gate's answer is the same, so C is not checked again (its drift is
    #    the last check's, and the report says when that was); A is checked and in sync.
    again = cycle(mitogen)
    assert again.source.commit == held_commit and again.status is Status.DRIFTED
    assert again.drift == held.drift and again.durations_s.check is None
    last_checked = parse_time(format_time(held.started_at))  # as the stored report says it (ms)
    assert again.rollout is not None and again.rollout.checked_at == last_checked
    assert again.rollout.enforced is not None
    assert (again.rollout.enforced.commit, again.rollout.enforced.status) == (converged, Status.IN_SYNC)
    assert any("was not checked again" in w for w in again.warnings)
    assert render.rollout_text(again) == (
        f"rollout: wave canary, waiting: collector unreachable, wave canary holds new commits (hold-all) "
        f"(enforcing {converged[:12]}: in sync; {held_commit[:12]} last checked "
        f"{held.started_at:%Y-%m-%dT%H:%M:%SZ})")
    assert (root / "app.conf").read_text() == "version=1\n"

    # 5. D breaks rollout.yml: D's check runs, the gate cannot decide, the cycle says so, and a hand edit
    #    of A's file is corrected back to A's content all the same (docs/rollout.md).
    broken = repo.commit({"rollout.yml": HOLD_ALL.replace("version: 1", "version: 2"),
                          "inventory/hosts.yml": inventory("3")}, "bad policy")
    (root / "app.conf").write_text("hand edit again\n")
    failed = cycle(mitogen)
    assert (root / "app.conf").read_text() == "version=1\n"
    assert failed.source.commit == broken and failed.status is Status.ERROR and failed.apply is None
    assert failed.phase_reached.value == "check" and kinds(failed.drift) == [("App config", "intentional")]
    assert [e.message for e in failed.errors] == [f"commit {broken[:12]}: rollout.yml: version: must be 1, got 2"]
    info = failed.rollout
    assert info is not None and info.gate is GateState.UNDECIDED and info.enforcing_commit == converged
    enforced = info.enforced
    assert enforced is not None and (enforced.commit, enforced.status) == (converged, Status.CORRECTED)
    assert (enforced.drift[0].diffs[0].before, enforced.drift[0].diffs[0].after) == ("hand edit again\n",
                                                                                     "version=1\n")

    # 6. E's inventory does not parse: E fails at its plan (no check of E); A is checked and in sync.
    unparsable = repo.commit({"rollout.yml": HOLD_ALL, "inventory/hosts.yml": "all: [children\n"}, "bad yaml")
    planless = cycle(mitogen)
    assert planless.source.commit == unparsable and planless.status is Status.ERROR
    assert planless.phase_reached.value == "plan" and planless.durations_s.check is None
    assert planless.errors[0].message.startswith(f"commit {unparsable[:12]}: "), planless.errors
    assert "inventory" in planless.errors[0].message
    assert planless.rollout is not None and planless.rollout.enforced is not None
    assert (planless.rollout.enforced.commit, planless.rollout.enforced.status) == (converged, Status.IN_SYNC)
    assert (root / "app.conf").read_text() == "version=1\n"
