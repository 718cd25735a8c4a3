"""The real daemon: a child process per cycle, a real Git repo, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import APP_INVENTORY, APP_PLAYBOOK, ROOT, GitRepo, make_repo

pytestmark = pytest.mark.ansible
SLEEPER = APP_PLAYBOOK + """    - name: Slow migration
      ansible.builtin.command: sleep 317
"""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def last_run(tmp_path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((tmp_path / "state/last_run.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


@contextmanager
def running_daemon(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out, subprocess.Popen([sys.executable, "-m", "agent.cli", "daemon",
                                                  "--config", str(config)], stderr=out, cwd=ROOT) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def sleepers() -> list[str]:
    out = subprocess.run(["pgrep", "-f", "sleep 317"], capture_output=True, text=True).stdout
    return out.split()


@pytest.mark.heavy  # about 70 s of live daemon cycles; make test-heavy runs it (docs/testing.md)
def test_daemon_picks_up_commits_serves_run_and_reloads(cli, write_config, app_repo: GitRepo,
                                                        tmp_path: Path) -> None:
    config = write_config(app_repo.path, schedule={"interval": "1h", "poll": "1s", "splay": "0s",
                                                   "timeout": "120s"})
    log = tmp_path / "daemon.log"
    with running_daemon(config, log) as proc:
        wait_for(lambda: (last_run(tmp_path) or {}).get("status") == "corrected", 90, "the first cycle")
        assert last_run(tmp_path)["trigger"] == "new_commit"
        # One line per cycle in the journal (logged at the daemon's default level, as under systemd).
        line = wait_for(lambda: next((x for x in log.read_text().splitlines() if "cycle done:" in x), None), 30,
                        "the cycle's log line")
        assert re.search(rf"cycle done: trigger=new_commit commit={app_repo.head[:12]} status=corrected drift=2 "
                         r"drift_kinds=intentional:2 changed=2 duration_s=\d+\.\d report=kept locally "
                         r"\(no collector\.url\) next_check_in_s=\d+", line), line
        status = cli("status", "--config", str(config))
        assert f"daemon: running (pid {proc.pid}, started " in status.out, status.out
        assert "next full check" in status.out
        started = time.monotonic()
        second = app_repo.commit({"inventory/hosts.yml": APP_INVENTORY.replace('"1"', '"2"')}, "v2")
        wait_for(lambda: (tmp_path / "root/app.conf").read_text() == "version=2\n", 90, "the new commit")
        report = wait_for(lambda: (r := last_run(tmp_path)) and r["source"]["commit"] == second and r, 30, "report")
        assert report["status"] == "corrected" and report["trigger"] == "new_commit"
        print(f"new commit converged in {time.monotonic() - started:.1f}s")

        result = cli("run", "--check", "--json", "--config", str(config))  # served by the daemon
        assert f"the daemon (pid {proc.pid}) runs this cycle" in result.err
        assert (result.code, result.report["status"], result.report["trigger"]) == (0, "in_sync", "manual")

        good = config.read_text()
        config.write_text(good + "bogus_key: 1\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused, keeping the old configuration" in log.read_text(), 20, "reload log")
        assert proc.poll() is None
        config.write_text(good)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not (tmp_path / "state/daemon.pid").exists()
    assert "daemon stopped" in log.read_text()


def test_sigterm_during_a_run_cancels_it_within_the_grace(write_config, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "origin", {"playbooks/app.yml": SLEEPER, "inventory/hosts.yml": APP_INVENTORY})
    config = write_config(repo.path, schedule={"poll": "1s", "splay": "0s", "timeout": "300s",
                                               "stop_grace": "2s"})
    with running_daemon(config, tmp_path / "daemon.log") as proc:
        wait_for(sleepers, 90, "the apply to reach the slow task")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    report = last_run(tmp_path)
    assert report is not None and report["status"] == "failed" and report["phase_reached"] == "apply"
    assert "cancelled" in report["errors"][0]["message"]
    wait_for(lambda: not sleepers(), 10, "the sleeping task to be killed with its process group")


def test_a_cycle_past_its_timeout_is_stopped_and_reported(cli, write_config, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "origin", {"playbooks/app.yml": SLEEPER, "inventory/hosts.yml": APP_INVENTORY})
    started = time.monotonic()
    result = cli("run", "--json", "--config", str(write_config(repo.path, schedule={"timeout": "15s"})))
    assert time.monotonic() - started < 60
    assert (result.code, result.report["status"]) == (1, "failed")
    assert result.report["phase_reached"] in ("check", "apply")  # where 15 s ran out depends on load
    assert "schedule.timeout" in result.report["errors"][0]["message"]
    wait_for(lambda: not sleepers(), 10, "the sleeping task to be killed with its process group")
    assert os.path.exists(tmp_path / "state/last_run.json")


@pytest.mark.heavy  # over 60 s alone: make test-heavy runs it (make test's budget, docs/testing.md)
def test_a_reload_to_another_ref_polls_and_applies_it_once(write_config, app_repo: GitRepo,
                                                           tmp_path: Path) -> None:
    """SIGHUP with a new source.ref: the daemon's probe follows the new ref (issue 17's defect: it kept
    asking the old one, and each poll then saw a 'new' commit), its commit is applied once, and then the
    daemon stays quiet."""
    app_repo.git("checkout", "-q", "-b", "next")
    other = app_repo.commit({"inventory/hosts.yml": APP_INVENTORY.replace('"1"', '"7"')}, "next: v7")
    app_repo.git("checkout", "-q", "main")
    schedule = {"interval": "1h", "poll": "1s", "splay": "0s", "timeout": "120s"}
    config = write_config(app_repo.path, schedule=schedule)
    log = tmp_path / "daemon.log"

    def new_commit_cycles() -> list[str]:
        return [x for x in log.read_text().splitlines() if "cycle done: trigger=new_commit" in x]

    with running_daemon(config, log) as proc:
        wait_for(lambda: (last_run(tmp_path) or {}).get("status") == "corrected", 90, "the first cycle")
        assert (tmp_path / "root/app.conf").read_text() == "version=1\n"
        write_config(app_repo.path, schedule=schedule, source={"url": str(app_repo.path), "ref": "next"})
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "source: url=" in log.read_text() and "ref=next" in log.read_text(), 20, "the reload")
        report = wait_for(lambda: (r := last_run(tmp_path)) and r["source"]["commit"] == other and r, 90,
                          "the new ref's commit")
        assert (report["status"], report["trigger"], report["source"]["ref"]) == ("corrected", "new_commit",
                                                                                "next")
        assert (tmp_path / "root/app.conf").read_text() == "version=7\n"
        assert f"new commit: commit={other[:12]} previous={app_repo.head[:12]}" in log.read_text()
        time.sleep(5)  # five polls of the new ref: none may see a "new" commit
        assert len(new_commit_cycles()) == 2, new_commit_cycles()
        assert last_run(tmp_path)["source"]["commit"] == other
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
