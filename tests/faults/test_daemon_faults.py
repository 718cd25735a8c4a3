"""The daemon under faults: a loop that keeps failing backs off (never a hot loop) and stops pinging the
watchdog, so systemd can restart it; corrupt state never stops it from starting or reporting; and under
journald an exception's reason stays on its one log line."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from agent import cli, daemon
from agent import config as config_mod
from agent.daemon import CycleOutcome, Daemon
from agent.report import Trigger
from tests.conftest import ROOT
from tests.faults.conftest import wait_for


def make_daemon(tmp_path: Path, spawn: Callable[[Trigger, bool], CycleOutcome],
                clock: Callable[[], float] = time.time) -> Daemon:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"host": "web01", "source": {"url": "repo"}, "state_dir": "state",
                                    "schedule": {"interval": "1h", "poll": "1s", "splay": "0s"}}))
    return Daemon(path, config_mod.load(path), spawn=spawn, probe=lambda: "c1", clock=clock)


def test_a_loop_that_keeps_failing_backs_off_and_stops_the_watchdog(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    sent: list[str] = []

    def spawn(trigger: Trigger, check_only: bool) -> CycleOutcome:
        calls.append(time.monotonic())
        raise RuntimeError("last_run.json: invalid JSON")  # what a corrupt state did to the loop

    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s while healthy
    monkeypatch.setattr(daemon, "sd_notify", sent.append)
    d = make_daemon(tmp_path, spawn)
    monkeypatch.setattr(d, "redeliver", lambda final: True)
    threading.Timer(3.5, d.stop.set).start()
    threading.Timer(3.5, d.wake.set).start()
    d.serve()
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert 2 <= len(calls) <= 3, calls  # retried after 1 s, then 2 s: no hot loop
    assert gaps[0] >= 0.9 and gaps == sorted(gaps), gaps
    assert "WATCHDOG=1" not in sent  # no cycle can run: systemd's watchdog is left to act


def test_the_loop_recovers_and_pings_again(tmp_path: Path) -> None:
    outcomes: list[bool] = [False, True]

    def spawn(trigger: Trigger, check_only: bool) -> CycleOutcome:
        if not outcomes.pop(0):
            raise OSError("a passing fault")
        from agent.report import Status

        return CycleOutcome(Status.IN_SYNC, "c1")

    now = [1_000_000.0]
    d = make_daemon(tmp_path, spawn, lambda: now[0])
    assert d._iterate() is False and d.loop_failures == 1 and d.next_full_at >= now[0] + 1
    now[0] += 0.5
    assert d._iterate() is False  # nothing due yet: still not healthy
    now[0] += 1
    d.last_commit = None
    assert d._iterate() is True and d.loop_failures == 0


def test_backoff_of_the_loop() -> None:
    assert [daemon.loop_backoff_s(n, 60, 1800) for n in (1, 2, 3, 5, 6, 9)] == [60, 120, 240, 960, 1800, 1800]
    assert daemon.loop_backoff_s(1, 0.1, 1800) == 1.0


def test_the_key_value_log_line_keeps_the_exception(capsys: pytest.CaptureFixture[str]) -> None:
    record = logging.LogRecord("agent.daemon", logging.ERROR, __file__, 1, "daemon iteration failed", (), None)
    try:
        json.loads("{not json")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = cli._KeyValueFormatter().format(record)
    assert "\n" not in line
    assert line.startswith("level=error logger=agent.daemon msg='daemon iteration failed'")
    assert "error='JSONDecodeError: Expecting property name enclosed in double quotes" in line
    assert " at=decoder.py:" in line


def test_the_daemon_starts_and_reports_with_corrupt_state_and_a_broken_git_cache(write_config, tmp_path: Path
                                                                                 ) -> None:
    """Corrupt last_run.json and state.json, and a git cache that is a file: the daemon starts, reports
    each problem, moves each aside, backs off, and keeps pinging the watchdog (cycles do run)."""
    config = write_config(tmp_path / "origin", schedule={"interval": "2s", "poll": "1s", "splay": "0s"})
    state = tmp_path / "state"
    state.mkdir()
    (state / "last_run.json").write_bytes(b'{"schema_version": 1, "run_')
    (state / "state.json").write_bytes(b"[]")
    (state / "repo").write_text("not a git repository\n")
    notify = tmp_path / "notify.sock"
    messages: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(0.2)
        done = threading.Event()

        def listen() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    messages.append(sock.recv(4096).decode())

        listener = threading.Thread(target=listen)
        listener.start()
        env = {"NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "1000000", "PATH": "/usr/bin:/bin"}
        log = tmp_path / "daemon.log"
        try:
            with log.open("wb") as out, subprocess.Popen([sys.executable, "-m", "agent.cli", "daemon",
                                                          "--config", str(config)],
                                                         stderr=out, cwd=ROOT, env=env) as proc:
                try:
                    wait_for(lambda: len(list((state / "history").glob("*.json"))) >= 2, 120, "two cycles")
                    assert proc.poll() is None, log.read_text()
                    proc.send_signal(signal.SIGTERM)
                    assert proc.wait(60) == 0
                finally:
                    if proc.poll() is None:
                        proc.kill()
        finally:
            done.set()
            listener.join()
    reports = [json.loads(p.read_text()) for p in sorted((state / "history").glob("*.json"))]
    first = reports[0]
    assert first["status"] == "error" and "state.json" in first["errors"][0]["message"]
    assert any("last_run.json" in w and "moved aside" in w for w in first["warnings"])
    assert any("git cache" in w and "moved aside as repo.corrupt-" in w for w in first["warnings"])
    assert all(r["status"] == "error" and r["errors"][0]["phase"] == "fetch" for r in reports[1:])
    text = log.read_text()
    assert text.count("iteration failed") == 0 and "Traceback" not in text, text
    assert "WATCHDOG=1" in messages
    assert len(list(state.glob("state.json.corrupt-*"))) == 1


def test_a_notify_socket_nobody_reads_never_blocks_the_daemon(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # bound, never read: its queue fills
        sock.bind(str(tmp_path / "notify.sock"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
        started = time.monotonic()
        done = threading.Thread(target=lambda: [daemon.sd_notify("WATCHDOG=1") for _ in range(200)], daemon=True)
        done.start()
        done.join(10)
        assert not done.is_alive() and time.monotonic() - started < 10
