"""Killed agents: every cycle that started is reported exactly once, with a real collector keeping the
ledger. A SIGKILL at every named step of a cycle (the test-only hook GITOPS_AGENT_TEST_KILL_AT), a SIGKILL
while Ansible changes the host (what it left running is killed and reported, and no runner file with a
diff stays on disk), and SIGKILLs at random moments."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent import runner
from tests.faults.conftest import COPY_TASK, Agent, Collector, cheap_repo, kill, wait_for, with_collector

# heavy: about 4 minutes of Ansible under kills; `make test-heavy` (run by .ci/run) runs it, not `make test`.
pytestmark = [pytest.mark.ansible, pytest.mark.heavy]
BIN = Path(sys.executable).parent
SECRET = "diff-secret-Vn28Qe"
KILL_ENV = "GITOPS_AGENT_TEST_KILL_AT"


def known_ids(a: Agent) -> set[str]:
    return set(a.records()) | {r["run_id"] for r in a.history()}


def started_by(a: Agent, before: set[str]) -> set[str]:
    """The run ids a killed invocation started: in the journal, or already published."""
    return known_ids(a) - before


def check_ledger(a: Agent, collector: Collector, started: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every started cycle is reported exactly once: one history file, one run at the collector, and the
    collector holds nothing else. `started` maps run_id -> how it ended (for the message)."""
    flushed = a.run("outbox", "--flush")
    assert "Traceback" not in flushed.stderr, flushed.stderr
    history = [r["run_id"] for r in a.history()]
    stored = collector.runs()
    lost = {r: why for r, why in started.items() if r not in stored}
    print("\nledger (run_id, how it ended, status and phase reached at the collector):")
    for run_id, why in started.items():
        phase = collector.report(run_id)["phase_reached"] if run_id in stored else ""
        print(f"  {run_id}  {why:<28} {stored.get(run_id, {}).get('status', 'LOST')} {phase}")
    assert lost == {}, f"cycles that started and were never reported: {lost}"
    assert sorted(history) == sorted(set(history)), "a cycle reported twice"
    assert set(history) >= set(started) and set(stored) == set(started), (set(stored) ^ set(started))
    assert a.records() == {}, "a cycle record was left behind"
    return stored


@pytest.mark.timeout(1200)
def test_a_kill_at_every_step_loses_no_report(agent: Callable[..., Agent], collector: Collector,
                                              tmp_path: Path) -> None:
    repo = cheap_repo(tmp_path / "origin")
    a = agent(repo.path, **with_collector(collector))
    # (step, --check): a check-only cycle goes through every step but apply and recheck
    steps = [("begin", True), ("check", True), ("apply", False), ("recheck", False), ("commit", True),
             ("recover-outbox", True), ("recover-report", True), ("recover-state", True),
             ("outbox", True), ("report", True), ("state", True), ("done", True)]
    started: dict[str, str] = {}
    for step, check_only in steps:
        before = known_ids(a)
        result = a.run("run", "--json", *(["--check"] if check_only else []), env={KILL_ENV: step})
        assert result.returncode == -9, (step, result.returncode, result.stderr)
        new = started_by(a, before)
        if step.startswith("recover-"):
            assert new == set(), f"killed while publishing an earlier report, yet {step} began a cycle"
        else:
            (run_id,) = new
            started[run_id] = f"killed at {step}"
    final = a.run("run", "--json", "--check")
    assert final.returncode == 0, final.stderr
    started[json.loads(final.stdout)["run_id"]] = "finished"
    stored = check_ledger(a, collector, started)
    by_step = {why.removeprefix("killed at "): run_id for run_id, why in started.items()}
    for step, phase in (("begin", "fetch"), ("check", "check"), ("apply", "apply"), ("recheck", "recheck")):
        report = collector.report(by_step[step])
        assert (report["status"], report["phase_reached"]) == ("error", phase), step
        assert "cycle interrupted at phase" in report["errors"][0]["message"]
        assert ("may have changed the host" in report["errors"][0]["message"]) is (phase in ("apply", "recheck"))
    for step in ("commit", "outbox", "report", "state", "done"):  # done before the kill: its own report
        assert stored[by_step[step]]["status"] == "in_sync", step
    state = json.loads((a.state_dir / "state.json").read_text())
    assert state["updated_at"] == json.loads(final.stdout)["started_at"]


SLOW_TASK = """\
    - name: Slow command
      ansible.builtin.shell: "touch {{ target_root }}/started && sleep 8 && echo late >> {{ target_root }}/late.log"
      changed_when: true
"""
SECRET_TASK = """\
    - name: Secret config
      ansible.builtin.copy:
        dest: "{{ target_root }}/secret.conf"
        content: "token={{ api_token }}\\n"
        mode: "0600"
"""


@pytest.mark.timeout(900)
def test_a_kill_during_the_apply_is_reported_and_leaves_nothing_running_or_on_disk(
        agent: Callable[..., Agent], collector: Collector, tmp_path: Path) -> None:
    password_file = tmp_path / "vault-pass"
    password_file.write_text("correct horse battery staple\n")
    password_file.chmod(0o600)
    inline = subprocess.run([str(BIN / "ansible-vault"), "encrypt_string", "--vault-password-file",
                             str(password_file), SECRET, "--name", "api_token"], check=True, capture_output=True,
                            text=True).stdout
    repo = cheap_repo(tmp_path / "origin", SECRET_TASK, SLOW_TASK, files={
        "inventory/group_vars/app.yml": "".join(f"{line}\n" for line in inline.splitlines())})
    a = agent(repo.path, vault_password_file=str(password_file), **with_collector(collector))
    root = tmp_path / "root"
    proc = a.start("run", "--json")
    wait_for(lambda: (root / "started").exists(), 300, "the apply to reach the slow command")
    killed_at = time.monotonic()
    (run_id,) = a.records()
    kill(proc)  # the agent only: Ansible, in sessions of its own, carries on
    assert runner.stale_processes(a.state_dir), "nothing of the killed cycle is running: the test is void"
    on_disk = [p for p in a.state_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert on_disk == [], f"plaintext on disk after the kill: {on_disk}"  # ansible-runner's stdout file

    second = a.run("run", "--json")  # kills the leftovers before anything else, then reports them
    assert second.returncode == 0, second.stderr
    assert runner.stale_processes(a.state_dir) == []
    assert [p.name for p in (a.state_dir / "work").iterdir() if p.name != "tmp"] == []
    time.sleep(max(0.0, killed_at + 10 - time.monotonic()))
    assert not (root / "late.log").exists(), "the killed cycle's command ran on after the next cycle started"

    stored = check_ledger(a, collector, {run_id: "killed during the apply",
                                         json.loads(second.stdout)["run_id"]: "finished"})
    interrupted = collector.report(run_id)
    message = interrupted["errors"][0]["message"]
    assert (interrupted["status"], interrupted["phase_reached"]) == ("error", "apply")
    assert "may have changed the host" in message and "process(es) it left running" in message
    assert "sleep 8" in message or "ansible-playbook" in message
    assert stored[json.loads(second.stdout)["run_id"]]["status"] == "in_sync"
    assert SECRET not in json.dumps(interrupted)


@pytest.mark.timeout(1800)
def test_random_kills_lose_no_report(agent: Callable[..., Agent], collector: Collector, tmp_path: Path) -> None:
    kills = int(os.environ.get("GITOPS_FAULTS_KILLS", "8"))  # plus 13 in the two tests above
    seed = int(os.environ.get("GITOPS_FAULTS_SEED", str(time.time_ns() % 100000)))
    print(f"\nrandom kills: {kills}, seed {seed} (GITOPS_FAULTS_SEED={seed} repeats it)")
    rnd = random.Random(seed)
    quick = COPY_TASK + SLOW_TASK.replace("sleep 8", "sleep 1").replace("touch {{ target_root }}/started && ", "")
    repo = cheap_repo(tmp_path / "origin", quick)
    a = agent(repo.path, **with_collector(collector))
    root = tmp_path / "root"
    started_at = time.monotonic()
    first = a.run("run", "--json")  # a whole cycle, to know how long one takes
    assert first.returncode == 0, first.stderr
    span = time.monotonic() - started_at
    started = {json.loads(first.stdout)["run_id"]: "finished"}
    for i in range(kills):
        (root / "app.conf").write_text(f"hand edit {i}\n")  # corrective drift: check, apply, recheck
        before = known_ids(a)
        proc = a.start("run", "--json")
        delay = rnd.uniform(0.0, span)
        began = time.monotonic()
        try:
            proc.wait(delay)
            how = "finished before its kill"
            span = min(span, time.monotonic() - began)  # later cycles are quicker: aim inside them
        except subprocess.TimeoutExpired:
            kill(proc)
            how = f"killed after {delay:.1f}s"
        else:
            proc.communicate()
        for run_id in started_by(a, before):
            started[run_id] = how
    final = a.run("run", "--json")
    assert final.returncode == 0, final.stderr
    started[json.loads(final.stdout)["run_id"]] = "finished"
    check_ledger(a, collector, started)
    assert runner.stale_processes(a.state_dir) == []
    assert (root / "app.conf").read_text() == "version=1\n"
