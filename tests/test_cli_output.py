"""What the CLI shows, without Ansible: the progress lines (pure), runner events -> progress records,
the daemon's line per cycle and its status file as `status` shows it, and -v/-vv/-vvv."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from agent import console, daemon, progress
from agent.daemon import CycleOutcome, Daemon, cycle_line
from agent.report import DriftKind, ErrorItem, Phase, Status, Trigger
from tests.conftest import ROOT
from tests.factory import drift_item, make_report


def test_progress_lines() -> None:
    counts = Counter({"ok": 2, "changed": 1})
    assert console.counts_text(Counter()) == ""
    assert console.counts_text(counts) == "3 tasks: 2 ok, 1 changed"
    assert console.counts_text(Counter({"skipped": 1, "failed": 1})) == "2 tasks: 1 failed, 1 skipped"
    assert console.running_line("check", "web", "Install nginx", counts, 12.34) == (
        "check    web / Install nginx   3 tasks: 2 ok, 1 changed   12.3s")
    assert console.running_line("fetch", "", "", Counter(), 0.5) == "fetch    fetching from Git   0.5s"
    assert console.done_line("plan", "roles: base, web", Counter(), 1.0) == "plan     roles: base, web   1.0s"
    assert console.done_line("verify", "signature verified by ops", Counter(), None) == (
        "verify   signature verified by ops")
    assert console.done_line("check", "", counts, 5.0) == "check    3 tasks: 2 ok, 1 changed   5.0s"


def test_runner_events_become_task_records() -> None:
    start = {"event": "playbook_on_task_start",
             "event_data": {"task": "Install nginx", "playbook": "/x/playbooks/web.yml"}}
    changed = {"event": "runner_on_ok", "event_data": {"task": "Install nginx", "playbook": "/x/playbooks/web.yml",
                                                        "task_action": "ansible.builtin.apt",
                                                        "res": {"changed": True}}}
    failed = {"event": "runner_on_failed", "event_data": {"task": "Start", "playbook": "/x/playbooks/web.yml",
                                                           "res": {"msg": "boom"}}}
    assert progress.from_runner_event(start) == progress.TaskStarted("web", "Install nginx")
    assert progress.from_runner_event(changed) == progress.TaskDone("web", "Install nginx", "changed")
    assert progress.from_runner_event(failed) == progress.TaskDone("web", "Start", "failed")
    assert progress.from_runner_event({"event": "verbose", "stdout": "x"}) is None


def test_the_daemon_says_what_each_cycle_did() -> None:
    report = make_report(status=Status.CORRECTED, drift=(drift_item("a", kind=DriftKind.INTENTIONAL),
                                                         drift_item("b", kind=DriftKind.CORRECTIVE),
                                                         drift_item("c", kind=DriftKind.CORRECTIVE)))
    line = cycle_line(Trigger.NEW_COMMIT, CycleOutcome(report.status, report.source.commit, report=report,
                                                       destination="delivered"), 50.0)
    assert line == ("cycle done: trigger=new_commit commit=aaaaaaaaaaaa status=corrected drift=3 "
                    "drift_kinds=corrective:2,intentional:1 changed=3 duration_s=42.0 report=delivered")
    failed = make_report(status=Status.ERROR, errors=(ErrorItem(Phase.PLAN, "host 'x' is not in the inventory"),))
    line = cycle_line(Trigger.SCHEDULE, CycleOutcome(Status.ERROR, None, report=failed,
                                                     destination="queued in the outbox (2 waiting)"), 1.0)
    assert "status=error drift=0 drift_kinds=- " in line
    assert line.endswith("report=queued in the outbox (2 waiting) error=\"host 'x' is not in the inventory\"")
    none = cycle_line(Trigger.RETRY, CycleOutcome(Status.ERROR, None, problem="exited with 1"), 3.0)
    assert none == "cycle done: trigger=retry status=error duration_s=3.0 report=none error='exited with 1'"


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"host": "web01", "source": {"url": "/nonexistent"},
                                    "state_dir": str(tmp_path / "state"), "schedule": {"splay": "0s"}}))
    return path


def _status(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(_config(tmp_path)),
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_status_shows_the_daemon_from_its_status_file(tmp_path: Path) -> None:
    from agent import config as config_mod

    cfg = config_mod.load(_config(tmp_path))
    seen: list[daemon.DaemonStatus | None] = []

    def spawn(trigger: Trigger, check_only: bool) -> CycleOutcome:
        seen.append(daemon.read_status(cfg.state_dir))  # what `status` would read during the cycle
        return CycleOutcome(Status.IN_SYNC, "c" * 40)

    runner = Daemon(cfg.path or Path(), cfg, spawn=spawn, probe=lambda: "c" * 40)
    runner.run_once()
    during = seen[0]
    assert during is not None and during.pid == os.getpid() and during.cycle_trigger == "new_commit"
    after = daemon.read_status(cfg.state_dir)
    assert after is not None and after.cycle_trigger is None and after.next_check_at is not None

    shown = _status(tmp_path)  # our pid is alive: the "daemon" runs
    assert f"daemon: running (pid {os.getpid()}, started " in shown.stdout
    assert re.search(r"next full check \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(in \d+[smh]\)", shown.stdout), shown.stdout
    assert "last run: none yet" in shown.stdout and shown.returncode == 1
    as_json = json.loads(_status(tmp_path, "--json").stdout)
    assert as_json["daemon"]["running"] is True and as_json["daemon"]["pid"] == os.getpid()

    data = json.loads((cfg.state_dir / daemon.STATUS_FILE).read_text())
    data["cycle"] = {"trigger": "schedule", "started_at": data["updated_at"]}
    (cfg.state_dir / daemon.STATUS_FILE).write_text(json.dumps(data))
    assert "a cycle is running (schedule) for " in _status(tmp_path).stdout

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    data["pid"] = int(dead.stdout)
    (cfg.state_dir / daemon.STATUS_FILE).write_text(json.dumps(data))
    assert f"daemon: not running (pid {data['pid']} of its status file is gone" in _status(tmp_path).stdout
    (cfg.state_dir / daemon.STATUS_FILE).unlink()
    assert "daemon: not running\n" in _status(tmp_path).stdout


def test_verbosity_shows_the_agent_s_debug_before_other_libraries(tmp_path: Path) -> None:
    """-vv: the agent's debug lines; other libraries' (httpx/httpcore here) only with -vvv."""
    token = tmp_path / "token"
    token.write_text("gco_x\n")
    token.chmod(0o600)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"host": "web01", "source": {"url": "/nonexistent"},
                                      "state_dir": str(tmp_path / "state"),
                                      "collector": {"url": "http://127.0.0.1:9", "token_file": str(token)}}))
    (tmp_path / "state/outbox").mkdir(parents=True)
    report = make_report("web01")
    from agent.report import to_json
    (tmp_path / f"state/outbox/{1:020d}-in_sync-{report.run_id}.json").write_text(to_json(report))

    def flush(*verbose: str) -> str:
        return subprocess.run([sys.executable, "-m", "agent.cli", *verbose, "outbox", "--flush", "--config",
                               str(config)], capture_output=True, text=True, cwd=ROOT, timeout=120).stderr

    quiet, debug, everything = flush(), flush("-vv"), flush("-vvv")
    assert quiet == ""
    assert re.search(r"level=debug logger=agent.delivery msg=.outbox flushed", debug), debug
    assert "logger=httpcore" not in debug and "logger=httpx" not in debug
    assert "logger=httpcore" in everything
