"""Issue 13, kind 6: the default strategy (mitogen) must not fail a host that linear would converge.

The matrix runs the same case repos under both strategies and expects the same task outcomes and diffs:
become to the same user on a host without sudo (mitogen now skips it as Ansible does), an interpreter and
a connection named in the inventory, and a module that re-executes itself under another Python (mitogen
cannot; the run is repeated with linear, and the result says so). A mitogen error in a task is a reason
to repeat the run with linear too, shown here with mitogen's own unpatched strategy.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import runner
from agent.ansible_env import Strategy
from agent.events import Outcome, ParsedRun, TaskResult
from agent.inventory import RunPlan
from agent.report import Diff, Stats
from agent.runner import RunMode, RunnerSettings, RunResult
from tests.semantics.cases import Case, load

MISSING_SUDO = "/nonexistent/sudo"  # this host "has no sudo": the become program cannot be started


def require_system_apt() -> None:
    if importlib.util.find_spec("apt") is not None:
        pytest.fail("this venv can import apt: the apt module would not respawn and the case proves nothing")
    if subprocess.run(["/usr/bin/python3", "-c", "import apt"], capture_output=True, check=False).returncode:
        if os.environ.get("CI"):
            pytest.fail("python3-apt is missing under CI (.ci/system-deps installs it)")
        pytest.skip("/usr/bin/python3 has no apt bindings (apt-get install python3-apt)")


def run_case(case: Case, tmp_path: Path, strategy: str, **extra: Any) -> tuple[RunResult, Path]:
    """A check of the case's playbooks under `strategy`, with the agent's runner (no cycle around it)."""
    base = tmp_path / strategy
    repo = base / "repo"
    shutil.copytree(case.repo, repo)
    (base / "root").mkdir()
    books = tuple(sorted((repo / "playbooks").glob("*.yml")))
    plan = RunPlan(host=case.host, commit="0" * 40, roles=tuple(b.stem for b in books), playbooks=books,
                   inventory=repo / "inventory", project_dir=repo)
    settings = RunnerSettings(work_dir=base / "work", timeout_s=180, strategy=strategy,
                              extra_vars={"target_root": str(base / "root"), **extra},
                              fact_cache_dir=base / "facts")
    return runner.run_playbooks(plan, RunMode.CHECK, settings, cancel=lambda: False), base / "root"


def outcomes(result: RunResult, root: Path) -> list[tuple[str, str, tuple[tuple[str, str | None], ...]]]:
    def mark(text: str | None) -> str | None:
        return None if text is None else text.replace(str(root), "{root}")

    return [(t.task, t.outcome.value, tuple((d.path.replace(str(root), "{root}"), mark(d.after)) for d in t.diffs))
            for t in result.parsed.tasks]


def both(case: Case, tmp_path: Path, **extra: Any) -> dict[str, tuple[RunResult, Path]]:
    return {s: run_case(case, tmp_path, s, **extra) for s in ("mitogen", "linear")}


@pytest.mark.ansible
def test_become_without_sudo_converges_under_both_strategies(tmp_path: Path) -> None:
    runs = both(load("become-without-sudo"), tmp_path, ansible_become_exe=MISSING_SUDO)
    (mitogen, m_root), (linear, l_root) = runs["mitogen"], runs["linear"]
    assert linear.ok and mitogen.ok, (mitogen.parsed, linear.parsed)
    assert outcomes(mitogen, m_root) == outcomes(linear, l_root)
    assert [t.outcome for t in linear.parsed.tasks] == [Outcome.CHANGED, Outcome.CHANGED, Outcome.OK, Outcome.OK]
    assert mitogen.strategy == runner.MITOGEN_STRATEGY and mitogen.fallback is None  # no second run needed
    assert mitogen.warnings == linear.warnings == ()


@pytest.mark.ansible
def test_the_inventorys_interpreter_and_connection_under_both_strategies(tmp_path: Path) -> None:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("the case names /usr/bin/python3, which this machine lacks")
    runs = both(load("inventory-interpreter"), tmp_path)
    (mitogen, m_root), (linear, l_root) = runs["mitogen"], runs["linear"]
    assert outcomes(mitogen, m_root) == outcomes(linear, l_root)
    (python_task,) = [t for t in linear.parsed.tasks if t.task == "Python that runs the modules"]
    assert python_task.diffs[0].after is not None and python_task.diffs[0].after.strip() == "/usr/bin/python3"
    for result in (mitogen, linear):  # the inventory's interpreter won over the agent's; ssh did not
        assert result.fallback is None
        assert result.warnings == (
            "the inventory or play vars give this host ansible_connection 'ssh'; the agent runs it with 'local' "
            "[D-connection-local]",
            "task 'Register with the load balancer' is delegated to 192.0.2.50; with the agent's "
            "ansible_connection 'local' it ran on this host [D-connection-local]")


@pytest.mark.ansible
def test_a_module_that_respawns_gives_the_same_outcome_under_both_strategies(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    require_system_apt()
    with caplog.at_level(logging.WARNING, logger="agent.runner"):
        runs = both(load("respawn-module"), tmp_path)
    (mitogen, m_root), (linear, l_root) = runs["mitogen"], runs["linear"]
    assert linear.ok and mitogen.ok and not mitogen.respawn_failed  # linear's run of it succeeded
    assert "re-executes itself under another Python" in caplog.text
    assert outcomes(mitogen, m_root) == outcomes(linear, l_root)
    assert [(t.task, t.outcome) for t in linear.parsed.tasks] == [
        ("Base files are installed", Outcome.OK), ("Package marker", Outcome.CHANGED)]
    assert mitogen.fallback is not None and "re-executes itself under another Python" in mitogen.fallback
    assert mitogen.strategy == "linear" and linear.fallback is None
    assert any("[D-strategy-fallback]" in w for w in mitogen.warnings)


@pytest.mark.ansible
def test_a_mitogen_error_in_a_task_repeats_the_run_with_linear(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """mitogen's own strategy, without the agent's fix for become, fails the case with the error the issue
    quotes; the run is repeated with linear, whose result stands, and the result says why."""
    mitogen_dir = runner.mitogen_strategy_dir()
    assert mitogen_dir is not None
    monkeypatch.setattr(runner, "MITOGEN_STRATEGY", "mitogen_linear")
    monkeypatch.setattr(runner, "_agent_strategy",
                        lambda s: Strategy("mitogen_linear", (mitogen_dir,)) if s == "mitogen" else None)
    result, _ = run_case(load("become-without-sudo"), tmp_path, "mitogen", ansible_become_exe=MISSING_SUDO)
    assert result.ok and result.strategy == "linear"
    assert result.fallback is not None
    assert "failed task 'Configuration directory'" in result.fallback
    assert "Child start failed" in result.fallback and MISSING_SUDO in result.fallback
    assert "zlib" not in result.fallback  # mitogen's bootstrap blob is cut off
    (warning,) = result.warnings
    assert warning.startswith("ansible.strategy mitogen failed task") and "[D-strategy-fallback]" in warning


def test_which_task_errors_come_from_mitogen() -> None:
    def failed(message: str) -> RunResult:
        task = TaskResult(role="app", play="App", task="Config", module="copy", outcome=Outcome.FAILED,
                          message=message)
        return RunResult(mode=RunMode.CHECK, status="failed", rc=2, duration_s=1.0,
                         parsed=ParsedRun((task,), Stats(failed=1), ()), strategy=runner.MITOGEN_STRATEGY)

    bootstrap = ("Task failed: error occurred on host vm: Child start failed: [Errno 2] No such file or "
                 "directory: 'sudo'. Command was: sudo -p mitogen-sudo-prompt: -u root -H -- /usr/bin/python3 "
                 "-c \"import sys;sys.path=[p for p in sys.path if p];import binascii,os,select,zlib;exec(zlib")
    reason = runner._fallback_reason(failed(bootstrap))
    assert reason is not None and reason.endswith("-u root -H -- /usr/bin/python3)")
    assert runner._fallback_reason(failed("Task failed: EOF on stream; last 100 lines received:")) is not None
    assert runner._fallback_reason(failed("Destination /etc/app does not exist")) is None


def test_a_fallback_in_the_check_runs_the_apply_and_recheck_with_linear(tmp_path: Path, write_config,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The cycle keeps linear once mitogen failed, and the report carries the runs' warnings (the runner is
    replaced at its boundary here; the runs themselves are real in the tests above)."""
    from agent.config import load as load_config
    from agent.cycle import Cycle, CycleOptions
    from tests.conftest import APP_INVENTORY, APP_PLAYBOOK, make_repo

    repo = make_repo(tmp_path / "origin", {"playbooks/app.yml": APP_PLAYBOOK, "inventory/hosts.yml": APP_INVENTORY})
    strategies: list[str] = []
    drifted = TaskResult(role="app", play="App", task="App config", module="copy", outcome=Outcome.CHANGED,
                         diffs=(Diff("/etc/app.conf", "a\n", "b\n"),))

    def fake_run(plan: RunPlan, mode: RunMode, settings: RunnerSettings, **_: Any) -> RunResult:
        strategies.append(settings.strategy)
        first = len(strategies) == 1
        task = drifted if first or mode is RunMode.APPLY else TaskResult(
            role="app", play="App", task="App config", module="copy", outcome=Outcome.OK)
        return RunResult(mode=mode, status="successful", rc=0, duration_s=0.1,
                         parsed=ParsedRun((task,), Stats(ok=1), ()), strategy="linear",
                         fallback="failed task 'App config' with an error of its own (x)" if first else None,
                         warnings=("ansible.strategy mitogen failed ... [D-strategy-fallback]",) if first else ())

    monkeypatch.setattr(runner, "run_playbooks", fake_run)
    monkeypatch.setattr(runner, "inventory_graph", lambda *a, **k: "@all:\n  |--@app:\n  |  |--testhost\n")
    cycle = Cycle(load_config(write_config(repo.path)), clock=lambda: datetime.now(UTC))
    report = cycle.run(CycleOptions())
    assert report.status.value == "corrected", report.errors
    assert strategies == ["mitogen", "linear", "linear"]
    assert report.warnings == ("ansible.strategy mitogen failed ... [D-strategy-fallback]",)


def test_only_tasks_delegated_to_another_host_are_named() -> None:
    def event(task: str, target: str | None) -> dict[str, Any]:
        res: dict[str, Any] = {"changed": False}
        if target is not None:
            res["_ansible_delegated_vars"] = {"ansible_host": target, "ansible_connection": "local"}
        return {"event": "runner_on_ok", "event_data": {"task": task, "res": res}}

    raw = [event("to lb", "lb01.example.com"), event("to localhost", "localhost"), event("to self", "web01"),
           event("plain", None), event("loopback", "127.0.0.1")]
    assert runner.delegated_elsewhere(raw, "web01") == [
        "task 'to lb' is delegated to lb01.example.com; with the agent's ansible_connection 'local' it ran on "
        "this host [D-connection-local]"]
