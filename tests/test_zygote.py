"""The warm start of watch checks (agent.zygote): a real helper process and real forked children, with a
probe in place of `gitops-agent` (no Ansible here; tests/test_watch_live.py runs real watch checks
through it)."""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent import zygote
from agent.control import pid_alive
from agent.zygote import PRELOAD, WarmStart, Zygote, ZygoteError

ROOT = Path(__file__).resolve().parent.parent


def probe(argv: list[str]) -> int:
    """What a forked child sees, written to the file argv[0]; `sleep S` first when asked; exit code 3."""
    if argv[1:2] == ["sleep"]:
        time.sleep(float(argv[2]))
    if argv[1:2] == ["exit"]:  # as the interpreter's exit: atexit handlers run, sys.exit() is 0
        atexit.register(lambda: Path(argv[0]).write_text("atexit ran"))
        sys.exit()
    devnull = os.stat(os.devnull)
    Path(argv[0]).write_text(json.dumps({
        "argv": argv, "pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
        "umask": os.umask(0o022), "cwd": os.getcwd(), "env": os.environ.get("ZYGOTE_TEST"),
        "uid": os.getuid(), "gid": os.getgid(),
        "stdin_null": os.fstat(0).st_rdev == devnull.st_rdev,
        "stdout_null": os.fstat(1).st_rdev == devnull.st_rdev,
        "ansible": sorted(m for m in sys.modules if m == "ansible" or m.startswith(("ansible.", "mitogen"))),
    }))
    return 3


PROBE_HELPER = (sys.executable, "-c", "import sys; from agent import zygote; from tests.test_zygote import probe; "
                "sys.exit(zygote.serve(sys.stdin, sys.stdout, main=probe, preload=()))")


def helper_env() -> dict[str, str]:
    return {**os.environ, "ZYGOTE_TEST": "yes", "PYTHONPATH": str(ROOT)}


def assert_serves(warm: zygote.WarmStart, out: Path) -> None:
    """The helper gets ready and forks a check whose child (the probe) writes `out` and exits 3."""
    assert warm.zygote.wait_ready(30)
    warm.ready = True
    child = warm.spawn([str(out)])
    assert child is not None and child.wait(30) == 3


def test_the_helper_imports_the_agent_but_nothing_of_ansible() -> None:
    """Ansible reads the repo's ansible.cfg, plugins and collections when it is imported and started:
    none of it may be imported before the fork, or a new commit's files could be missed."""
    code = ("import sys; from agent.zygote import PRELOAD; import importlib\n"
            "for m in PRELOAD: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m == 'ansible' or m.startswith(('ansible.', 'mitogen', "
            "'ansible_mitogen'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert "agent.cli" in PRELOAD and "ansible_runner" in PRELOAD


def test_a_forked_child_runs_as_the_cold_one_would(tmp_path: Path) -> None:
    """Same user, environment, umask and working directory as the helper (the daemon's); a session of its
    own (its pid is its process group, so the daemon's stop signals its whole group); stdin and stdout on
    /dev/null; its exit code reaches the daemon; the helper serves one check after another."""
    warm = Zygote(helper_env(), command=PROBE_HELPER)
    warm.start()
    try:
        assert warm.proc is not None
        helper = warm.proc.pid
        for n in range(2):
            out = tmp_path / f"seen-{n}.json"
            child = warm.spawn([str(out), "run", "--trigger", "watch"])
            assert child.wait(30) == 3 and child.returncode == 3
            seen = json.loads(out.read_text())
            assert seen["argv"] == [str(out), "run", "--trigger", "watch"]
            assert seen["pid"] == child.pid and seen["ppid"] == helper
            assert seen["sid"] == seen["pgid"] == child.pid
            assert (seen["uid"], seen["gid"], seen["cwd"]) == (os.getuid(), os.getgid(), os.getcwd())
            umask = os.umask(0o022)
            os.umask(umask)
            assert seen["umask"] == umask and seen["env"] == "yes"
            assert seen["stdin_null"] and seen["stdout_null"]
            assert seen["ansible"] == []
    finally:
        warm.close()
    assert warm.proc is None


def test_a_child_exits_as_the_interpreter_would(tmp_path: Path) -> None:
    warm = Zygote(helper_env(), command=PROBE_HELPER)
    warm.start()
    try:
        child = warm.spawn([str(tmp_path / "exit.txt"), "exit"])
        assert child.wait(30) == 0
        assert (tmp_path / "exit.txt").read_text() == "atexit ran"
    finally:
        warm.close()


def test_a_stop_signals_the_childs_group_and_waiting_times_out(tmp_path: Path) -> None:
    warm = Zygote(helper_env(), command=PROBE_HELPER)
    warm.start()
    try:
        child = warm.spawn([str(tmp_path / "seen.json"), "sleep", "30"])
        assert child.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(0.2)
        os.killpg(child.pid, signal.SIGTERM)  # what agent.child does to stop a cycle
        assert child.wait(30) == -signal.SIGTERM
    finally:
        warm.close()


def test_the_helper_dies_with_the_daemon(tmp_path: Path) -> None:
    """Its stdin ends when the daemon goes (and PR_SET_PDEATHSIG kills it when the daemon is killed)."""
    script = tmp_path / "daemon.py"
    script.write_text("import sys, time\nfrom agent.zygote import Zygote\n"
                      f"z = Zygote({helper_env()!r}, command={PROBE_HELPER!r})\nz.start()\n"
                      "print(z.proc.pid, flush=True)\ntime.sleep(60)\n")
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                          env=helper_env()) as daemon:
        assert daemon.stdout is not None
        helper = int(daemon.stdout.readline())
        daemon.kill()
    deadline = time.monotonic() + 20
    while pid_alive(helper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(helper)


def test_a_helper_that_dies_during_a_check_leaves_the_check_running(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    warm = Zygote(helper_env(), command=PROBE_HELPER)
    warm.start()
    out = tmp_path / "seen.json"
    try:
        child = warm.spawn([str(out), "sleep", "1"])
        assert warm.proc is not None
        warm.proc.kill()
        with caplog.at_level(logging.WARNING, logger="agent.zygote"):
            assert child.wait(30) == 1  # its exit code is lost with the helper; the cycle's report is not
        assert out.exists()  # the cycle itself finished
        assert "the helper stopped while cycle" in caplog.text
    finally:
        warm.close()


def test_warm_start_falls_back_to_the_cold_path_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A helper that cannot come up, or is not ready yet, means a new process for this check (spawn gives
    None, with a log line); after MAX_STARTS failed starts in a row, warm start is off for good."""
    broken = WarmStart(helper_env(), command=(sys.executable, "-c", "import sys; sys.exit(7)"))
    with caplog.at_level(logging.INFO, logger="agent.zygote"):
        for _ in range(WarmStart.MAX_STARTS + 1):
            broken.ensure()
            deadline = time.monotonic() + 30
            while broken.zygote.running and time.monotonic() < deadline:  # it exits at once (7)
                time.sleep(0.05)
            assert broken.spawn(["run"]) is None
    broken.close()
    assert broken.off
    assert "this check starts a new process" in caplog.text
    assert "warm start: off, the helper failed 3 times in a row" in caplog.text

    slow = WarmStart(helper_env(), command=(sys.executable, "-c", "import sys; sys.stdin.read()"))  # no answer
    slow.ensure()
    try:
        with caplog.at_level(logging.INFO, logger="agent.zygote"):
            assert slow.spawn(["run"]) is None
        assert "still importing" in caplog.text and slow.zygote.running  # kept for the next check
    finally:
        slow.close()


def test_nonsense_from_the_helper_is_an_error() -> None:
    talker = Zygote(helper_env(), command=(sys.executable, "-c", "print('hello', flush=True); import sys; "
                                                            "sys.stdin.read()"))
    with pytest.raises(ZygoteError, match="answered 'hello'"):
        talker.start()
    talker.close()


def test_an_upgrade_of_the_agents_code_restarts_the_helper(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Files renamed into the agent's package directory (dpkg, rpm, pip) change its mtime: the next
    check starts a new process (the new code) and the helper is started again after it, with the new
    code."""
    code = tmp_path / "agent"
    code.mkdir()
    warm = WarmStart(helper_env(), command=PROBE_HELPER, code_dir=code)
    warm.ensure()
    try:
        assert_serves(warm, tmp_path / "one.json")
        (code / "cycle.py.dpkg-new").write_text("new\n")
        os.rename(code / "cycle.py.dpkg-new", code / "cycle.py")
        os.utime(code, ns=(0, 0))  # a clock tick apart, whatever the file system's resolution
        with caplog.at_level(logging.INFO, logger="agent.zygote"):
            assert warm.spawn([str(tmp_path / "two.json")]) is None
        assert "code in" in caplog.text and not warm.zygote.running
        warm.ensure()  # after the cycle: a new helper, with the new code's stamp
        assert warm.zygote.running
        assert_serves(warm, tmp_path / "three.json")
    finally:
        warm.close()


def _site(tmp_path: Path) -> Path:
    """A directory of installed distributions holding `fakedep` 1.0 (a package and its dist-info)."""
    site = tmp_path / "site"
    (site / "fakedep").mkdir(parents=True)
    (site / "fakedep" / "__init__.py").write_text("VERSION = '1.0'\n")
    (site / "fakedep-1.0.dist-info").mkdir()
    (site / "fakedep-1.0.dist-info" / "RECORD").write_text("fakedep/__init__.py,,\n")
    return site


def _renamed_in(directory: Path, name: str, text: str) -> None:
    """As dpkg, rpm and pip replace a file: a new one renamed into place (the directory's mtime moves)."""
    (directory / f"{name}.new").write_text(text)
    os.rename(directory / f"{name}.new", directory / name)
    os.utime(directory, ns=(0, 0))  # a clock tick apart, whatever the file system's resolution


def _upgrade_module(site: Path) -> None:
    _renamed_in(site / "fakedep", "__init__.py", "VERSION = '2.0'\n")


def _upgrade_distribution(site: Path) -> None:
    """pip's upgrade of another distribution in the same site-packages (nothing the helper imported):
    the old dist-info goes, the new one (named by version) comes."""
    (site / "otherdep-1.0.dist-info").rename(site / "otherdep-2.0.dist-info")
    os.utime(site, ns=(0, 0))


@pytest.mark.parametrize("upgrade", [_upgrade_module, _upgrade_distribution])
def test_an_upgrade_of_what_the_helper_imported_restarts_it(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             upgrade) -> None:
    """The kind behind "only agent/'s mtime": a dependency upgraded alone (here `fakedep`, preloaded as
    ansible_runner or httpx are, or another distribution a child would import later, as ansible-core or
    mitogen) was not seen, and the helper kept forking children with the old code. The helper checks the
    directories of everything it imported, and the dist-info directories beside them, before each fork."""
    site = _site(tmp_path)
    (site / "otherdep-1.0.dist-info").mkdir()
    helper = (sys.executable, "-c", "import sys; from agent import zygote; from tests.test_zygote import probe; "
              "sys.exit(zygote.serve(sys.stdin, sys.stdout, main=probe, preload=('fakedep',)))")
    env = {**helper_env(), "PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}
    (tmp_path / "agent").mkdir()
    warm = WarmStart(env, command=helper, code_dir=tmp_path / "agent")  # agent/ itself does not change here
    warm.ensure()
    try:
        assert_serves(warm, tmp_path / "one.json")
        upgrade(site)
        with caplog.at_level(logging.INFO, logger="agent.zygote"):
            assert warm.spawn([str(tmp_path / "two.json")]) is None
        assert "changed since the helper imported its code" in caplog.text, caplog.text
        assert str(site) in caplog.text and not warm.zygote.running and not warm.off
        assert not (tmp_path / "two.json").exists()  # no child of the old code
        warm.ensure()  # after the cycle: a new helper, stamped with the new code
        assert warm.zygote.running
        assert_serves(warm, tmp_path / "three.json")
    finally:
        warm.close()


def test_an_upgrade_during_the_helpers_imports_restarts_it(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The race of the staleness check: the helper stamped what it had imported only after its imports
    (~1 s with the default preload), so a distribution upgraded meanwhile (its dist-info renamed in the
    site-packages the helper had already looked at) was stamped as new while older code was loaded, and
    the helper forked children of that code until the next upgrade. The preloaded `racedep` upgrades
    `otherdep` while it is imported, as pip would at that moment: the first check must not use the helper."""
    site = _site(tmp_path)
    (site / "otherdep-1.0.dist-info").mkdir()
    old, new = str(site / "otherdep-1.0.dist-info"), str(site / "otherdep-2.0.dist-info")
    (site / "racedep.py").write_text(  # only the first time: the upgrade happens once
        f"import os\nif os.path.exists({old!r}):\n    os.rename({old!r}, {new!r})\n"
        f"    os.utime({str(site)!r}, ns=(0, 0))\n")
    helper = (sys.executable, "-c", "import sys; from agent import zygote; from tests.test_zygote import probe; "
              "sys.exit(zygote.serve(sys.stdin, sys.stdout, main=probe, preload=('racedep',)))")
    env = {**helper_env(), "PYTHONPATH": f"{ROOT}{os.pathsep}{site}", "PYTHONDONTWRITEBYTECODE": "1"}
    (tmp_path / "agent").mkdir()
    warm = WarmStart(env, command=helper, code_dir=tmp_path / "agent")
    warm.ensure()
    try:
        assert warm.zygote.wait_ready(30)
        warm.ready = True
        with caplog.at_level(logging.INFO, logger="agent.zygote"):
            assert warm.spawn([str(tmp_path / "one.json")]) is None
        assert "changed since the helper imported its code" in caplog.text, caplog.text
        assert not (tmp_path / "one.json").exists()  # no child of code older than what is installed
        warm.ensure()  # a new helper, whose imports nothing changed: it serves
        assert_serves(warm, tmp_path / "two.json")
    finally:
        warm.close()


def test_the_code_stamp_covers_loaded_modules_and_distribution_directories(tmp_path: Path) -> None:
    """code_stamp without a helper: a module's directory and a dist-info holder count; a sys.path
    directory without distributions (the working directory, a source checkout) and relative entries do not."""
    site = _site(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    module = type(sys)("fakedep")
    module.__file__ = str(site / "fakedep" / "__init__.py")
    stamp = zygote.code_stamp({"fakedep": module, "builtin": sys}, [str(site), str(plain), "", "relative"])
    assert set(stamp) == {str(site / "fakedep"), str(site)}
    assert zygote.stale(stamp) is None
    _renamed_in(plain, "x.py", "")
    assert zygote.stale(stamp) is None
    _upgrade_module(site)
    assert zygote.stale(stamp) == str(site / "fakedep")


def test_a_helper_too_slow_to_start_a_check_leaves_no_second_cycle(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A helper that answers too late (stopped here; in life a starved or swapped one): the check falls back
    to the cold path, and the helper must not serve the request late. Closed gently (stdin ends), it forked
    the child once it ran again and was killed 5 s later waiting for it: a second cycle, unsupervised and
    holding the cycle lock next to the cold path's."""
    warm = WarmStart(helper_env(), command=PROBE_HELPER)
    warm.zygote.start_timeout_s = 0.5
    warm.ensure()
    out = tmp_path / "late.json"
    try:
        assert warm.zygote.wait_ready(30) and warm.zygote.proc is not None
        warm.ready = True
        helper = warm.zygote.proc.pid
        os.kill(helper, signal.SIGSTOP)
        resume = threading.Timer(1.5, lambda: pid_alive(helper) and os.kill(helper, signal.SIGCONT))
        resume.start()
        with caplog.at_level(logging.WARNING, logger="agent.zygote"):
            assert warm.spawn([str(out), "sleep", "0.5"]) is None
        assert "did not start a cycle" in caplog.text and not warm.zygote.running
        resume.join()
        time.sleep(3)  # a late child would have written its file by now
        assert not out.exists()
    finally:
        warm.close()


def test_abandoning_the_helper_stops_a_child_it_started_that_nobody_took(tmp_path: Path) -> None:
    """Its `started` came after the daemon stopped listening (unread in the pipe): the child is stopped,
    not left to run."""
    pid_file = tmp_path / "child.pid"
    helper = ("import json, os, subprocess, sys, time\n"
              "print(json.dumps({'ready': os.getpid()}), flush=True)\nsys.stdin.readline()\n"
              "child = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
              "print(json.dumps({'started': child.pid}), flush=True)\n"
              f"open({str(pid_file)!r} + '.tmp', 'w').write(str(child.pid))\n"
              f"os.rename({str(pid_file)!r} + '.tmp', {str(pid_file)!r})\ntime.sleep(60)\n")
    warm = Zygote(helper_env(), command=(sys.executable, "-c", helper))
    warm.start()
    assert warm.proc is not None and warm.proc.stdin is not None and warm.proc.stdout is not None
    warm.proc.stdin.write(json.dumps({"argv": ["run"]}) + "\n")
    warm.proc.stdin.flush()
    # The pid file is written after `started` was printed: once it is there, `started` is in the pipe,
    # unread (waiting on the pipe alone could wake on an earlier line and race the helper's print).
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(pid_file.read_text())
    warm.abandon()
    deadline = time.monotonic() + 10
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(child) and warm.proc is None


def running(pid: int) -> bool:
    """Not gone and not a zombie (ended, waiting for whoever adopted it to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _answering(*answers: bytes) -> tuple[str, ...]:
    """A helper that says `answers` in turn, one per request (the first at once: its `ready`)."""
    says = "".join(f"sys.stdout.buffer.write({a!r}); sys.stdout.flush(); sys.stdin.readline()\n" for a in answers)
    return (sys.executable, "-c", "import sys\n" + says + "sys.stdin.read()\n")  # ends with its stdin


@pytest.mark.parametrize("answer", [
    b"\xff\xfe\n",  # not ASCII: was a UnicodeDecodeError out of the daemon's cycle
    b'{"started": true}\n',  # true is 1 in Python: a stop was killpg(1, SIGTERM)
    b'{"started": 0}\n',  # a stop was killpg(0, SIGTERM): the daemon's own process group
    b'{"started": -1}\n',
    b"x" * 100_000,  # no end of line: was read into memory without end
])
def test_a_helper_answering_garbage_to_a_request_means_the_cold_path(answer: bytes) -> None:
    warm = WarmStart(helper_env(), command=_answering(b'{"ready": 1}\n', answer))
    warm.ensure()
    try:
        assert warm.zygote.wait_ready(30)
        warm.ready = True
        assert warm.spawn(["run"]) is None and not warm.zygote.running
    finally:
        warm.close()


@pytest.mark.parametrize("code", [b'"x"', b"null", b"2.5", b"true"])
def test_an_exit_code_that_is_no_integer_is_a_failure(code: bytes) -> None:
    pid = 999_999  # no such process: nothing is signalled
    warm = Zygote(helper_env(), command=_answering(
        b'{"ready": 1}\n', b'{"started": %d}\n{"exited": %d, "code": %s}\n' % (pid, pid, code)))
    warm.start()
    try:
        assert warm.spawn(["run"]).wait(30) == 1
    finally:
        warm.close()
