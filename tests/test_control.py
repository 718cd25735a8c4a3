"""The CLI <-> daemon control protocol (agent.control) and the state_dir layout (agent.paths), on files
in tmp_path; the live daemon serving `run` is in test_daemon_live.py."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from agent import control, paths
from agent.errors import AgentError
from agent.paths import StatePaths


def test_a_request_goes_from_submit_to_pending_to_complete_to_wait(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    where = StatePaths(tmp_path)
    request_id = control.submit(where, 4242, check_only=True)
    assert sent and sent[0][0] == 4242
    (where.requests / "junk.json").write_text("[1, 2")  # unreadable: dropped
    (found,) = control.pending(where)
    assert found == control.Request(request_id, True)
    assert not (where.requests / "junk.json").exists()
    control.complete(where, found, "in_sync", "run-1")
    assert control.pending(where) == []
    answer = json.loads((where.requests / f"{request_id}.done").read_text())
    assert answer == {"status": "in_sync", "run_id": "run-1"}
    assert control.wait(where, request_id, pid=4242, timeout_s=1) == control.Answer("in_sync", "run-1")
    assert not (where.requests / f"{request_id}.done").exists()


def test_wait_gives_up_after_its_timeout(tmp_path: Path) -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(AgentError, match=r"the daemon \(pid 7\) did not run the requested cycle in time"):
        control.wait(StatePaths(tmp_path), "nope", pid=7, timeout_s=3, sleep=sleep, clock=lambda: now[0],
                     alive=lambda pid: True)
    assert now[0] == pytest.approx(3.5)


def test_wait_stops_at_once_when_the_daemon_dies_and_withdraws_the_request(tmp_path: Path) -> None:
    where = StatePaths(tmp_path)
    where.requests.mkdir(parents=True)
    (where.requests / "r1.json").write_text('{"check_only": false}')
    states = iter([True, True, False])
    slept: list[float] = []
    with pytest.raises(AgentError, match=r"the daemon \(pid 7\) stopped before it ran the requested cycle"):
        control.wait(where, "r1", pid=7, timeout_s=600, sleep=slept.append, alive=lambda pid: next(states))
    assert slept == [0.5, 0.5]  # not the 600 s deadline
    assert control.pending(where) == []  # a later daemon does not run a cycle nobody waits for


def test_the_report_is_the_named_runs_even_when_a_later_cycle_replaced_last_run(tmp_path: Path) -> None:
    from agent.report import Status
    from agent.state import StateStore
    from tests.factory import make_report

    store = StateStore(tmp_path)
    asked, later = make_report("web01", status=Status.CORRECTED), make_report("web01", status=Status.IN_SYNC)
    store.write_report(asked)
    store.write_report(later)  # the next scheduled cycle finished before `run` read the answer
    assert store.last_report() == later
    assert store.report_of(asked.run_id) == asked
    assert store.report_of("no-such-run") is None


def test_daemon_pid_is_the_live_one_and_never_the_daemons_own_child(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    where = StatePaths(tmp_path)
    assert control.daemon_pid(where) is None
    control.write_pid(where)
    assert control.daemon_pid(where) == os.getpid()
    monkeypatch.setenv(control.CHILD_ENV, "1")
    assert control.daemon_pid(where) is None
    monkeypatch.delenv(control.CHILD_ENV)
    where.daemon_pid.write_text("not a pid\n")
    assert control.daemon_pid(where) is None
    control.remove_pid(where)
    assert not where.daemon_pid.exists()


def test_every_path_of_the_layout_is_documented_and_under_state_dir(tmp_path: Path) -> None:
    where = StatePaths(tmp_path)
    names = [n for n, v in vars(StatePaths).items() if isinstance(v, property)]
    doc = paths.__doc__ or ""
    for name in names:
        path = getattr(where, name)
        assert path.parent == tmp_path, name
        assert re.search(rf"^  {re.escape(path.name)}\b", doc, re.M) or f" {path.name}" in doc, path.name
    assert len({getattr(where, n) for n in names}) == len(names)
