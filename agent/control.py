"""The CLI <-> daemon control protocol: `gitops-agent run` asks the running daemon for a cycle rather than
fight it for the cycle lock.

- The daemon writes its pid to state_dir/daemon.pid when it starts (`write_pid`) and removes it when it
  stops (`remove_pid`); `daemon_pid` finds it (None when there is none, it is dead, or the caller is one
  of the daemon's own cycle processes, which carry CHILD_ENV).
- `run` writes requests/<id>.json ({"check_only": bool}) and sends SIGUSR1 (`submit`), then polls for
  requests/<id>.done (`wait`), giving up when the daemon dies or the deadline passes; the report is the
  history file of the run the answer names (a later cycle may already have replaced last_run.json).
- The daemon reads requests/*.json (`pending`; an unreadable one is dropped), runs the cycle, writes
  requests/<id>.done ({"status": ..., "run_id": ... or null}) and removes the request (`complete`).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import AgentError
from agent.fsutil import atomic_write
from agent.paths import StatePaths

CHILD_ENV = "GITOPS_AGENT_DAEMON_CHILD"  # set in the environment of the daemon's cycle processes


@dataclass(frozen=True)
class Request:
    id: str
    check_only: bool


@dataclass(frozen=True)
class Answer:
    """The daemon's answer to a request: the cycle's status (a report status value) and its run_id
    (None when the cycle process left no report)."""
    status: str
    run_id: str | None


def write_pid(paths: StatePaths) -> None:
    atomic_write(paths.daemon_pid, f"{os.getpid()}\n".encode(), mode=0o644)


def remove_pid(paths: StatePaths) -> None:
    paths.daemon_pid.unlink(missing_ok=True)


def daemon_pid(paths: StatePaths) -> int | None:
    """The running daemon's pid for this state_dir, if there is one (and we are not its child)."""
    if os.environ.get(CHILD_ENV):
        return None
    try:
        pid = int(paths.daemon_pid.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def submit(paths: StatePaths, pid: int, *, check_only: bool) -> str:
    """Ask the daemon `pid` for a cycle; returns the request's id (for `wait`)."""
    request_id = uuid.uuid4().hex
    atomic_write(paths.requests / f"{request_id}.json", json.dumps({"check_only": check_only}).encode())
    os.kill(pid, signal.SIGUSR1)
    return request_id


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (signal 0; a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def wait(paths: StatePaths, request_id: str, *, pid: int, timeout_s: float,
         sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
         alive: Callable[[int], bool] = pid_alive) -> Answer:
    """Until the daemon answered the request: its answer. AgentError when the daemon `pid` stops before
    it answered, or after `timeout_s` (seconds)."""
    done = paths.requests / f"{request_id}.done"
    deadline = clock() + timeout_s
    while not done.exists():
        if not alive(pid) and not done.exists():
            (paths.requests / f"{request_id}.json").unlink(missing_ok=True)
            raise AgentError(f"the daemon (pid {pid}) stopped before it ran the requested cycle; "
                             "see its log (journalctl -u gitops-agent)")
        if clock() > deadline:
            raise AgentError(f"the daemon (pid {pid}) did not run the requested cycle in time")
        sleep(0.5)
    try:
        data = json.loads(done.read_text(encoding="utf-8"))
        run_id = data.get("run_id")
        answer = Answer(str(data["status"]), run_id if isinstance(run_id, str) else None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        answer = Answer("unknown", None)  # unreadable: no run named
    done.unlink(missing_ok=True)
    return answer


def pending(paths: StatePaths) -> list[Request]:
    """The requests waiting, oldest name first; an unreadable request file is dropped."""
    found = []
    for path in sorted(paths.requests.glob("*.json")) if paths.requests.is_dir() else ():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found.append(Request(path.stem, bool(data.get("check_only"))))
        except (OSError, ValueError, AttributeError):
            path.unlink(missing_ok=True)
    return found


def complete(paths: StatePaths, request: Request, status: str, run_id: str | None = None) -> None:
    """Answer a request: the cycle it asked for ended with `status` (a report status value) in the run
    `run_id` (None when it left no report)."""
    answer = {"status": status, "run_id": run_id}
    atomic_write(paths.requests / f"{request.id}.done", json.dumps(answer).encode())
    (paths.requests / f"{request.id}.json").unlink(missing_ok=True)
