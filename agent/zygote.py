"""A warm start for the daemon's watch checks: a helper process (a "zygote") that imported the cycle's
code once and forks one child per check, so that a check does not pay Python's start and the agent's
imports (about 1 s of a watch check's time to detect; docs/watch.md, bench/README.md).

    python -m agent.zygote          (started by the daemon: stdin takes requests, stdout answers)

Protocol, one JSON object per line. The helper says `{"ready": PID}` once its imports are done. The
daemon asks `{"argv": [...]}` (the arguments of `gitops-agent`, e.g. `run --trigger watch --roles app`);
the helper forks a child that runs `agent.cli.main(argv)` in a session of its own (as the cold path's
`start_new_session`), with stdin and stdout on /dev/null and stderr the daemon's, and answers
`{"started": PID}`, then `{"exited": PID, "code": N}` when the child has ended. One child at a time.

What is and is not shared with the child, and why the check stays the same:
- Only the agent's own code and libraries are imported before the fork (`PRELOAD`): nothing of the
  config repo, and never Ansible itself. Ansible reads the repo's ansible.cfg, plugins and collections
  when ansible-playbook starts, which stays a new process per run (exactly as on the cold path), so a new
  commit's files are read by the run that checks them; nothing of a run is kept for the next.
- The agent's configuration is read by the child (`main` loads it), as on the cold path.
- User, environment, umask and working directory are the daemon's: the helper is started from the
  daemon with the environment the cold path's child gets (`daemon.child_env`), and changes none of them.
- It dies with the daemon: PR_SET_PDEATHSIG, and it exits when its stdin ends. A child running at that
  moment is in its own session, as on the cold path, and finishes its cycle.
The daemon falls back to the cold path (a new `gitops-agent run` process) when the helper cannot start,
dies, or answers nonsense, and says so in its log (agent.child).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from agent.control import pid_alive
from agent.errors import AgentError

log = logging.getLogger(__name__)

# What a cycle child imports anyway (its own code, ansible_runner, the HTTP client that delivers the
# report): none of it reads the config repo, the environment's ANSIBLE_* or the working directory at
# import time (tests/test_zygote.py checks that nothing of Ansible is imported).
PRELOAD = ("agent.cli", "agent.cli_cycle", "agent.cycle", "agent.wiring", "agent.delivery", "ansible_runner",
           "httpx")
READY_TIMEOUT_S = 60.0
MAX_ANSWER_CHARS = 65536  # an answer is one short line
START_TIMEOUT_S = 10.0  # for the helper's `started`; then the check starts a new process
PR_SET_PDEATHSIG = 1


class ZygoteError(AgentError):
    """The warm-start helper cannot start, or stopped answering: the daemon falls back to the cold path."""


class ZygoteStale(ZygoteError):
    """The helper's code is no longer what is installed (an upgrade): it exited; start it again."""


# -- the helper process ------------------------------------------------------------------------------

def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _say(out: IO[str], message: Mapping[str, object]) -> None:
    out.write(json.dumps(dict(message)) + "\n")
    out.flush()


def _cli_main(argv: list[str]) -> int:
    cli = importlib.import_module("agent.cli")
    sys.argv = [str(cli.__file__), *argv]  # as `python -m agent.cli` has it
    return int(cli.main(argv))


def _child(argv: list[str], channel: tuple[int, int], main: Callable[[list[str]], int]) -> None:
    """In the forked child: a session of its own, /dev/null for stdin and stdout, then `gitops-agent ARGV`
    (the signal dispositions are Python's start-up ones: the helper never changes them). Never returns."""
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in channel:  # the helper's request and answer pipes are not the child's
            if fd > 1:
                os.close(fd)
        os.dup2(null, 0)
        os.dup2(null, 1)
        if null > 1:
            os.close(null)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the new fd 0, for the life of the process
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        code = main(argv)
    except SystemExit as e:
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    except BaseException:  # the child must never return into the helper's loop
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(BaseException):  # what the interpreter's exit would do (atexit: logging,
            atexit._run_exitfuncs()  # weakref finalizers of temporary directories), then the streams
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def code_stamp(modules: Mapping[str, object] | None = None,
               path: Sequence[str] | None = None) -> dict[str, int]:
    """What the helper's code was read from, as {directory: st_mtime_ns}: the directory of every loaded
    module's file (the agent's, the standard library's, ansible_runner's, httpx's, ...) and every
    sys.path directory that holds installed distributions (`*.dist-info`: a distribution upgraded or
    added there renames its dist-info, named by version, so a package a child imports later, such as
    ansible-core or mitogen, counts too). Package managers (pip, dpkg, rpm) replace a file by renaming a
    new one into place or unlinking the old one, which changes its directory's mtime; a file overwritten
    in place does not, and is not seen. Directories rather than files: they also show a module added to
    a package or a dist-info renamed, and they are fewer (46 against 456 files with the default PRELOAD;
    about 1 ms a check, docs/watch.md). A directory that cannot be read stamps -1."""
    dirs: set[str] = set()
    for module in list((sys.modules if modules is None else modules).values()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and Path(file).is_absolute():
            dirs.add(str(Path(file).parent))
    for entry in sys.path if path is None else path:
        if entry and Path(entry).is_absolute():
            with contextlib.suppress(OSError), os.scandir(entry) as found:
                if any(e.name.endswith(".dist-info") for e in found):
                    dirs.add(entry)
    return {d: _mtime(d) for d in sorted(dirs)}


def _mtime(directory: str) -> int:
    try:
        return Path(directory).stat().st_mtime_ns
    except OSError:
        return -1


def stale(stamp: Mapping[str, int]) -> str | None:
    """The first directory of `stamp` (code_stamp) whose mtime changed since, or None: all as they were."""
    return next((d for d, ns in stamp.items() if _mtime(d) != ns), None)


def serve(requests: IO[str], answers: IO[str], main: Callable[[list[str]], int] = _cli_main,
          preload: Sequence[str] = PRELOAD) -> int:
    """The helper's loop (see the module's docstring): imports `preload`, then each child runs
    `main(argv)` (`gitops-agent ARGV`; tests give another) and exits with what it returns. Before each
    fork it checks that its code is still what is installed (code_stamp): when not, it answers
    `{"stale": DIRECTORY}` and exits, so that no check runs old code or mixes it with new files it imports
    later. The directories known before the imports keep their times from then: a distribution upgraded
    while the helper imports is seen at the first check. Returns when `requests` ends."""
    _die_with_parent()
    before = code_stamp()  # what is already loaded, and the dist-info holders: an upgrade during the
    for name in preload:   # imports below must not be stamped as what they loaded
        importlib.import_module(name)
    stamp = {**code_stamp(), **before}
    _say(answers, {"ready": os.getpid()})
    channel = (requests.fileno(), answers.fileno())
    for line in requests:
        try:
            argv = [str(a) for a in json.loads(line)["argv"]]
        except (ValueError, KeyError, TypeError):
            _say(answers, {"error": f"not a request: {line.strip()[:80]!r}"})
            continue
        changed = stale(stamp)
        if changed is not None:
            _say(answers, {"stale": changed})
            return 0
        if threading.active_count() != 1:  # fork() copies one thread: never fork a threaded process
            _say(answers, {"error": "the helper has threads; it stops"})
            return 1
        pid = os.fork()
        if pid == 0:
            _child(argv, channel, main)
        _say(answers, {"started": pid})
        _, status = os.waitpid(pid, 0)
        _say(answers, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})
    return 0


# -- the daemon's side -------------------------------------------------------------------------------

class WarmChild:
    """A cycle process forked by the helper: the part of subprocess.Popen that agent.child uses (pid,
    poll, wait, returncode). Signals go to its process group (its pid), as for a Popen'd child."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote = zygote
        self.pid = pid
        self.returncode: int | None = None
        self.lost = False  # the helper went away while this child ran

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"warm child {self.pid}", timeout or 0.0)
            self._read(left)
        return self.returncode

    def _read(self, timeout: float | None) -> None:
        if self.lost:  # nobody can tell its exit code any more: it ended when it is gone
            if pid_alive(self.pid):
                time.sleep(min(0.2, timeout or 0.0))
            else:
                self.returncode = 1
            return
        try:
            answer = self.zygote.answer(timeout)
        except ZygoteError as e:  # the helper died; the child (a session of its own) may still run
            log.warning("warm start: the helper stopped while cycle pid=%d ran (%s); the cycle goes on",
                        self.pid, e)
            self.lost = True
            return
        if answer is not None and answer.get("exited") == self.pid:
            code = answer.get("code")
            self.returncode = code if type(code) is int else 1


def _stamp(code_dir: Path) -> int | None:
    """The modification time of the agent's package directory: a package upgrade (dpkg, rpm, pip)
    renames new files into it, which changes it."""
    try:
        return code_dir.stat().st_mtime_ns
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Zygote:
    """The daemon's handle on the helper: start() it, spawn() cycle children through it, close() it."""

    def __init__(self, env: Mapping[str, str], *, preload_timeout_s: float = READY_TIMEOUT_S,
                 command: Sequence[str] = (sys.executable, "-m", "agent.zygote")) -> None:
        self.env = dict(env)
        self.preload_timeout_s = preload_timeout_s
        self.start_timeout_s = START_TIMEOUT_S
        self.command = list(command)
        self.proc: subprocess.Popen[str] | None = None
        self._buffer = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, wait: bool = True) -> None:
        """Start the helper; with `wait`, wait for its imports (raises ZygoteError when it does not come
        up). Without, wait_ready() later."""
        self.close()
        self.proc = subprocess.Popen(  # a session of its own: a terminal's Ctrl-C is the daemon's to handle
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=self.env, text=True, start_new_session=True)
        if wait and not self.wait_ready(self.preload_timeout_s):
            self.close()
            raise ZygoteError(f"the warm-start helper did not come up within {self.preload_timeout_s:g}s")

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the helper's `ready`: True when it came, False when nothing
        came yet. Raises ZygoteError when the helper died or said something else."""
        answer = self.answer(timeout)
        if answer is None:
            return False
        if "ready" not in answer:
            raise ZygoteError(f"the warm-start helper is not ready: {answer}")
        log.info("warm start: helper pid=%s ready", answer["ready"])
        return True

    def spawn(self, argv: list[str]) -> WarmChild:
        """Fork a cycle child running `gitops-agent ARGV`. Raises ZygoteError when the helper cannot."""
        if self.proc is None or self.proc.stdin is None or not self.running:
            raise ZygoteError("the warm-start helper is not running")
        try:
            self.proc.stdin.write(json.dumps({"argv": argv}) + "\n")
            self.proc.stdin.flush()
        except OSError as e:
            raise ZygoteError(f"the warm-start helper does not take requests: {e}") from e
        answer = self.answer(self.start_timeout_s)
        if answer is not None and "stale" in answer:
            raise ZygoteStale(f"{str(answer['stale'])[:200]} changed since the helper imported its code")
        pid = None if answer is None else answer.get("started")
        if type(pid) is not int or pid <= 1:  # 0, 1, -1 or true (1) would make a stop signal the daemon's
            # own process group (killpg(0)), init's, or every process
            raise ZygoteError(f"the warm-start helper did not start a cycle: {answer or 'no answer'}")
        return WarmChild(self, pid)

    def answer(self, timeout: float | None) -> dict[str, Any] | None:
        """The helper's next answer, or None when none came within `timeout` seconds."""
        if self.proc is None or self.proc.stdout is None:
            raise ZygoteError("the warm-start helper is not running")
        fd = self.proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while "\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ZygoteError(f"the warm-start helper exited ({self.proc.poll()})")
            # its answers are ASCII (JSON); anything else is nonsense, refused below as such
            self._buffer += chunk.decode("ascii", "replace")
            if len(self._buffer) > MAX_ANSWER_CHARS and "\n" not in self._buffer:
                raise ZygoteError(f"the warm-start helper answered {self._buffer[:80]!r}... (no end of line)")
        line, self._buffer = self._buffer.split("\n", 1)
        try:
            answer = json.loads(line)
        except ValueError as e:
            raise ZygoteError(f"the warm-start helper answered {line[:80]!r}") from e
        if not isinstance(answer, dict):
            raise ZygoteError(f"the warm-start helper answered {line[:80]!r}")
        return answer

    def abandon(self) -> None:
        """Stop a helper that failed a request at once (SIGKILL), and stop (SIGTERM to it and its group, as
        agent.child stops a cycle) any child it said it started that nobody took. A request the daemon gave
        up on must not be served late: the check runs on the cold path instead, and a late child would be a
        second cycle that nobody supervises (no timeout, no stop with the daemon) and that holds the
        cycle lock. (A child forked in the instant between the answer and the SIGKILL, whose `started`
        never came, is the one case left.)"""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        started: list[int] = []
        with contextlib.suppress(ZygoteError, ValueError, OSError):  # up to its end of output
            while (answer := self.answer(0.0)) is not None:
                pid = answer.get("started")
                if type(pid) is int and pid > 1:
                    started.append(pid)
        for pid in started:
            log.warning("warm start: stopping cycle pid=%d, started by the helper after the daemon gave up "
                        "on it", pid)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)
        self.close()

    def close(self) -> None:
        """Stop the helper (its stdin ends; SIGKILL if it does not go). A running child is not touched."""
        proc, self.proc, self._buffer = self.proc, None, ""
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class WarmStart:
    """The daemon's warm start: a Zygote kept running, and the fall back to the cold path.

    spawn() forks a cycle child from the helper, or returns None (the caller then starts a process
    afresh) when the helper is not ready or fails; each failure is one log line. ensure() starts the
    helper when it is not running, at most MAX_STARTS times in a row without a check through it (a helper
    that cannot stay up is not started forever: warm start is then off, said once)."""

    MAX_STARTS = 3

    def __init__(self, env: Mapping[str, str], *, preload_timeout_s: float = READY_TIMEOUT_S,
                 command: Sequence[str] = (sys.executable, "-m", "agent.zygote"),
                 code_dir: Path = Path(__file__).parent) -> None:
        self.zygote = Zygote(env, preload_timeout_s=preload_timeout_s, command=command)
        self.starts = 0  # in a row, without a check forked since
        self.ready = False
        self.off = False
        self.code_dir = code_dir
        self.code_stamp = _stamp(code_dir)  # the agent's code as the helper imported it

    def ensure(self) -> None:
        """Start the helper unless it runs (it becomes ready in the background: its imports take ~1 s)."""
        if self.off or self.zygote.running:
            return
        if self.starts >= self.MAX_STARTS:
            self.off = True
            log.warning("warm start: off, the helper failed %d times in a row; watch checks start a new "
                        "process (the cold path) until a reload or restart", self.starts)
            return
        self.starts += 1
        self.ready = False
        self.code_stamp = _stamp(self.code_dir)
        try:
            self.zygote.start(wait=False)
        except (OSError, ZygoteError) as e:
            log.warning("warm start: the helper cannot start, the cold path is used: %s", e)

    def spawn(self, argv: list[str]) -> WarmChild | None:
        """A cycle child forked by the helper, or None: start one afresh (the reason is in the log)."""
        if self.off or not self.zygote.running:
            if not self.off:
                log.warning("warm start: the helper is not running; this check starts a new process")
            return None
        if _stamp(self.code_dir) != self.code_stamp:  # an upgrade replaced the agent's files
            log.info("warm start: the agent's code in %s changed since the helper started; this check "
                     "starts a new process, and the helper is started again after it", self.code_dir)
            self.zygote.close()
            return None
        try:
            if not self.ready and not self.zygote.wait_ready(0.0):
                log.info("warm start: the helper is still importing; this check starts a new process")
                return None
            self.ready = True
            child = self.zygote.spawn(argv)
        except ZygoteStale as e:  # an upgrade, not a failure: the helper exited, and starts again after
            log.info("warm start: %s; this check starts a new process, and the helper is started again "
                     "after it", e)
            self.zygote.close()
            return None
        except ZygoteError as e:
            log.warning("warm start failed, this check starts a new process: %s", e)
            self.zygote.abandon()
            return None
        self.starts = 0
        log.info("warm start: cycle pid=%d forked by the helper", child.pid)
        return child

    def close(self) -> None:
        self.zygote.close()


if __name__ == "__main__":
    sys.exit(serve(sys.stdin, sys.stdout))
