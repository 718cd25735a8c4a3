"""The daemon's one home for child processes: each cycle is `gitops-agent run` in its own session.

Ansible never runs inside the daemon (so the daemon stays small), and a cycle that overstays is stopped:
SIGTERM to the child's process group makes the child cancel Ansible (ansible-runner kills Ansible's own
process group) and report the run as failed; SIGKILL follows if the child does not exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from agent.daemon import CycleOutcome, child_env
from agent.errors import AgentError
from agent.report import Report, Status, Trigger
from agent.state import StateStore
from agent.zygote import WarmStart

log = logging.getLogger(__name__)
BACKSTOP_S = 60.0  # beyond schedule.timeout, before the child is stopped from outside
TERM_WAIT_S = 20.0


class _Child(Protocol):
    """A cycle process: a Popen'd one, or one forked by the warm-start helper (agent.zygote.WarmChild)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def _signal_group(proc: _Child, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _stop(proc: _Child, why: str) -> None:
    log.warning("stopping the cycle process: pid=%d reason=%s", proc.pid, why)
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(TERM_WAIT_S)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def run_cycle(config_path: Path, store: StateStore, trigger: Trigger, check_only: bool, *, timeout_s: float,
              stop: threading.Event, grace_s: float, ping: Callable[[], None],
              destination: Callable[[Report], str] | None = None,
              roles: tuple[str, ...] | None = None, warm: WarmStart | None = None) -> CycleOutcome:
    """Run one cycle in a child process; return what its report says (and, with `destination`, where
    the report went: the child delivers it before it exits). `roles`: check only these (a watch check).
    `warm`: fork the child from the warm-start helper (agent.zygote) when it runs; else, or when it
    fails, start `gitops-agent run` afresh (said in the log)."""
    args = ["run", "--config", str(config_path), "--trigger", trigger.value,
            *(["--check"] if check_only else []), *(["--roles", ",".join(roles)] if roles else [])]
    before = store.last_report()
    started = time.monotonic()
    proc: _Child | None = warm.spawn(args) if warm is not None else None
    if proc is not None:
        _supervise(proc, started, timeout_s=timeout_s, stop=stop, grace_s=grace_s, ping=ping)
    else:
        with subprocess.Popen([sys.executable, "-m", "agent.cli", *args], start_new_session=True,
                              env=child_env(), stdout=subprocess.DEVNULL) as cold:
            _supervise(cold, started, timeout_s=timeout_s, stop=stop, grace_s=grace_s, ping=ping)
        proc = cold
    if warm is not None:
        warm.ensure()  # a helper that died is started again after the cycle, off the detection path
    code = proc.returncode if proc.returncode is not None else 1
    outcome = _outcome(store, before.run_id if before else None, code)
    if outcome.report is not None and destination is not None:
        try:
            outcome = replace(outcome, destination=destination(outcome.report))
        except (OSError, AgentError) as e:
            outcome = replace(outcome, destination=f"unknown ({e})")
    return outcome


def _supervise(proc: _Child, started: float, *, timeout_s: float, stop: threading.Event, grace_s: float,
               ping: Callable[[], None]) -> None:
    """Wait for the cycle process, pinging the watchdog; stop it when the daemon stops (after the grace)
    or when it overstays schedule.timeout (plus a backstop)."""
    stop_by: float | None = None
    while proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)
        ping()
        now = time.monotonic()
        if stop.is_set() and stop_by is None:
            stop_by = now + grace_s
        if stop_by is not None and now > stop_by:
            _stop(proc, "the daemon is stopping")
        elif now - started > timeout_s + BACKSTOP_S:
            _stop(proc, f"past schedule.timeout ({timeout_s:g}s) and did not stop itself")


def _outcome(store: StateStore, previous_run_id: str | None, code: int) -> CycleOutcome:
    """What the cycle process left. Its problems are not logged here: the daemon's cycle line says them."""
    try:
        report = store.last_report()
    except AgentError as e:
        return CycleOutcome(Status.ERROR, None, problem=f"the cycle process left an unreadable report: {e}")
    if report is None or report.run_id == previous_run_id:
        return CycleOutcome(Status.ERROR, None,
                            problem=f"the cycle process exited with {code} and wrote no report")
    return CycleOutcome(report.status, report.source.commit, report=report)
