"""The daemon loop driven by run_once() with a fake clock, a fake spawn and a fake probe (the real
child process and Git probe are exercised in test_daemon_live.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import config as config_mod
from agent import daemon
from agent.daemon import CycleOutcome, Daemon
from agent.report import Pause, Status, Trigger
from agent.state import StateStore

HOUR = 3600.0


def test_splay_is_fixed_per_host_and_spread() -> None:
    offsets = {daemon.splay_offset(f"web{i:02d}.example.com", 300) for i in range(100)}
    assert daemon.splay_offset("web01", 300) == daemon.splay_offset("web01", 300)
    assert all(0 <= o < 300 for o in offsets) and len(offsets) > 60
    assert daemon.splay_offset("web01", 0) == 0


def test_next_slot_and_backoff() -> None:
    assert daemon.next_slot(1000.0, 600, 30) == 1230.0
    assert daemon.next_slot(1230.0, 600, 30) == 1830.0
    assert [daemon.backoff_s(n, 600) for n in (1, 2, 3, 4, 5)] == [600, 1200, 2400, 2400, 2400]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Fakes:
    def __init__(self) -> None:
        self.remote: str | None = "c1"
        self.outcomes: list[Status] = []
        self.spawned: list[tuple[Trigger, bool]] = []
        self.ran_commit: str | None = None

    def spawn(self, trigger: Trigger, check_only: bool) -> CycleOutcome:
        self.spawned.append((trigger, check_only))
        status = self.outcomes.pop(0) if self.outcomes else Status.IN_SYNC
        return CycleOutcome(status, self.remote)

    def probe(self) -> str | None:
        return self.remote


def make(tmp_path: Path, **schedule: str) -> tuple[Daemon, Fakes, Clock, Path]:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"host": "web01", "source": {"url": "repo"}, "state_dir": "state",
                                    "schedule": {"interval": "1h", "poll": "1m", "splay": "5m", **schedule}}))
    fakes, clock = Fakes(), Clock(1_000_000.0)
    d = Daemon(path, config_mod.load(path), spawn=fakes.spawn, probe=fakes.probe, clock=clock)
    return d, fakes, clock, path


def test_new_commit_runs_at_once_then_full_checks_on_schedule(tmp_path: Path) -> None:
    d, fakes, clock, _ = make(tmp_path)
    assert d.run_once() is Trigger.NEW_COMMIT  # first poll: a commit the host has not run
    assert d.run_once() is None  # nothing due
    clock.now += 61
    assert d.run_once() is None  # polled: same commit
    clock.now = d.next_full_at
    assert d.run_once() is Trigger.SCHEDULE
    offset = daemon.splay_offset("web01", 300)
    assert (d.next_full_at - offset) % HOUR == 0  # on this host's slot
    fakes.remote = "c2"
    clock.now += 61
    assert d.run_once() is Trigger.NEW_COMMIT


def test_failed_commit_is_not_retried_on_every_poll(tmp_path: Path) -> None:
    d, fakes, clock, _ = make(tmp_path)
    fakes.outcomes = [Status.FAILED, Status.FAILED, Status.FAILED]
    start = clock.now
    assert d.run_once() is Trigger.NEW_COMMIT and d.failures == 1
    assert d.next_full_at == start + HOUR
    for _ in range(10):  # polls see the same, failed commit: no cycle
        clock.now += 61
        assert d.run_once() is None
    clock.now = d.next_full_at
    assert d.run_once() is Trigger.RETRY and d.failures == 2
    assert d.next_full_at == clock.now + 2 * HOUR  # backing off
    fakes.remote = "c3"  # a newer commit is tried at once
    clock.now += 61
    assert d.run_once() is Trigger.NEW_COMMIT and d.failures == 3
    fakes.outcomes = [Status.CORRECTED]
    clock.now = d.next_full_at
    assert d.run_once() is Trigger.RETRY and d.failures == 0


def test_requests_from_run_are_served_first(tmp_path: Path) -> None:
    d, fakes, _, _ = make(tmp_path)
    requests = tmp_path / "state/requests"
    requests.mkdir(parents=True)
    (requests / "abc.json").write_text(json.dumps({"check_only": True}))
    assert d.run_once() is Trigger.MANUAL
    assert fakes.spawned == [(Trigger.MANUAL, True)]
    assert json.loads((requests / "abc.done").read_text()) == {"status": "in_sync", "run_id": None}  # the fake cycle left no report
    assert not (requests / "abc.json").exists()


def test_reload_keeps_old_config_when_new_one_is_invalid(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d, _, _, path = make(tmp_path)
    path.write_text("source: {url: repo}\nschedule: {interval: never}\n")
    d.reload_requested = True
    d.run_once()
    assert d.config.schedule.interval_s == HOUR
    assert "reload refused, keeping the old configuration" in caplog.text
    path.write_text("host: web01\nsource: {url: repo}\nstate_dir: state\nschedule: {interval: 10m}\n")
    d.reload()
    assert d.config.schedule.interval_s == 600


def test_reload_rebuilds_the_probe_and_flush_from_the_new_config(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The probe and flush are built from each configuration (issue 17: the probe kept the start-up
    source.ref, and every poll then fired a new-commit cycle); a moved state_dir is refused."""
    caplog.set_level(logging.INFO, "agent.daemon")
    heads = {"main": "c-main", "next": "c-next"}
    built: list[tuple[str, str | None]] = []
    flushed: list[str | None] = []

    def build(cfg: config_mod.AgentConfig) -> daemon.Parts:
        built.append((cfg.source.ref, cfg.collector.url))
        return daemon.Parts(probe=lambda: heads[cfg.source.ref],
                            redeliver=lambda final: flushed.append(cfg.collector.url) is None)

    path = tmp_path / "agent.yaml"
    base = {"host": "web01", "state_dir": "state", "schedule": {"interval": "1h", "poll": "1m", "splay": "0s"}}
    path.write_text(yaml.safe_dump({**base, "source": {"url": "repo"}}))
    fakes, clock = Fakes(), Clock(1_000_000.0)
    d = Daemon(path, config_mod.load(path), spawn=fakes.spawn, build=build, clock=clock)
    fakes.remote = "c-main"
    assert d.run_once() is Trigger.NEW_COMMIT and d.last_commit == "c-main"
    path.write_text(yaml.safe_dump({**base, "source": {"url": "repo", "ref": "next"},
                                    "collector": {"url": "http://127.0.0.1:9", "token_file": "t"}}))
    d.reload_requested = True
    fakes.remote = "c-next"  # what the child's cycle of the new ref reports
    assert d.run_once() is Trigger.NEW_COMMIT  # polled at once after the reload, on the new ref
    assert built == [("main", None), ("next", "http://127.0.0.1:9")]
    assert flushed == ["http://127.0.0.1:9"]  # the outbox is tried with the new collector
    for _ in range(5):  # the next polls ask the new ref: no repeated new-commit cycles
        clock.now += 61
        assert d.run_once() is None
    assert [t for t, _ in fakes.spawned] == [Trigger.NEW_COMMIT, Trigger.NEW_COMMIT]
    assert f"source: url={tmp_path / 'repo'} ref=next" in caplog.text
    path.write_text(yaml.safe_dump({**base, "state_dir": "elsewhere", "source": {"url": "repo"}}))
    d.reload()
    assert "reload refused, keeping the old configuration: state_dir changed" in caplog.text
    assert d.config.source.ref == "next" and len(built) == 2


def test_pause_expires_by_itself(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    store.write_pause(Pause(reason="db migration", by="alice", since=now, until=now + timedelta(hours=4)))
    pause = store.read_pause(now + timedelta(hours=1))
    assert pause is not None and pause.reason == "db migration" and pause.by == "alice"
    assert store.read_pause(now + timedelta(hours=4)) is None
    assert not store.pause_file.exists()


def test_sd_notify_sends_datagrams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    address = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        monkeypatch.setenv("NOTIFY_SOCKET", str(address))
        daemon.sd_notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    assert daemon.watchdog_interval_s() == 10.0


def test_textfile_metrics() -> None:
    from agent import textfile
    from tests.test_report import sample

    text = textfile.render(sample())
    assert 'gitops_agent_last_run_status{host="web01",status="corrected"} 1' in text
    assert 'gitops_agent_last_run_status{host="web01",status="failed"} 0' in text
    assert 'gitops_agent_drift_items{host="web01",kind="corrective"} 1' in text
    assert 'gitops_agent_failed_tasks{host="web01"} 1' in text
    assert text.endswith("\n") and all(line.startswith(("#", "gitops_agent_")) for line in text.splitlines())
    assert "gitops_agent_watch_paths" not in text  # no daemon watched: no watch metrics
    from dataclasses import replace

    from agent.report import ContestedPath, WatchInfo
    watched = textfile.render(replace(sample(), watch=WatchInfo(
        watched=7, unwatched=2, contested=(ContestedPath("/etc/a", 3),))))
    assert 'gitops_agent_watch_paths{host="web01",state="watched"} 7' in watched
    assert 'gitops_agent_watch_paths{host="web01",state="unwatched"} 2' in watched
    assert 'gitops_agent_watch_contested_paths{host="web01"} 1' in watched


def test_daemon_with_an_invalid_configuration_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """EX_CONFIG: gitops-agent.service's RestartPreventExitStatus, so systemd does not restart it in a loop."""
    from agent.cli import main

    bad = tmp_path / "agent.yaml"
    bad.write_text("host: web01\nsource: {url: repo}\nschedule: {interval: often}\n")
    assert main(["daemon", "--config", str(bad)]) == 78
    assert "schedule.interval" in capsys.readouterr().err
    assert main(["run", "--config", str(bad)]) == 78  # every command: a configuration error is EX_CONFIG


def warm_daemon(tmp_path: Path, command: Callable[[], tuple[str, ...]]) -> tuple[Daemon, list[Any]]:
    """A daemon (fake cycles) with watch and the warm start on, whose helpers run `command()` (read at each
    start), and the list of the helpers it started, in order."""
    from agent import zygote
    from tests.test_zygote import helper_env

    helpers: list[zygote.WarmStart] = []

    def warm_start() -> zygote.WarmStart:
        warm = zygote.WarmStart(helper_env(), command=command())
        warm.ensure()
        helpers.append(warm)
        return warm

    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"host": "web01", "source": {"url": "repo"}, "state_dir": "state",
                                    "schedule": {"interval": "1h", "poll": "1m", "splay": "0s"},
                                    "watch": True, "watch_warm_start": True}))
    fakes = Fakes()
    d = Daemon(path, config_mod.load(path), spawn=fakes.spawn, probe=fakes.probe, clock=Clock(1_000_000.0),
               warm_start=warm_start)
    return d, helpers


def test_a_reload_starts_again_a_warm_start_that_gave_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A helper that failed WarmStart.MAX_STARTS times in a row turns warm start off ("the cold path"); the
    operator fixes the cause and reloads: the reload, which follows what the configuration wants, left the
    given-up helper in place until a restart. Now it starts a new one (and closes the old)."""
    from agent import zygote
    from tests.test_zygote import PROBE_HELPER

    caplog.set_level(logging.INFO, "agent.daemon")
    caplog.set_level(logging.INFO, "agent.zygote")
    command: list[tuple[str, ...]] = [(sys.executable, "-c", "import sys; sys.exit(1)")]  # broken at first
    d, helpers = warm_daemon(tmp_path, lambda: command[0])
    d.start_watch()
    d.follow_config()
    try:
        first = helpers[0]
        for _ in range(zygote.WarmStart.MAX_STARTS + 1):  # as each watch check's ensure() after its cycle
            assert first.zygote.proc is None or first.zygote.proc.wait(10) == 1
            first.ensure()
        assert first.off and "warm start: off, the helper failed 3 times" in caplog.text
        command[0] = PROBE_HELPER  # fixed
        d.reload()
        assert len(helpers) == 2 and d.warm is helpers[1] and not helpers[1].off
        assert helpers[1].zygote.wait_ready(30) and first.zygote.proc is None
        assert "warm start: on" in caplog.text.split("warm start: off, the helper failed")[1]
        d.reload()  # one that runs is kept
        assert len(helpers) == 2 and d.warm is helpers[1]
    finally:
        d.stop_watch()
        for warm in helpers:
            warm.close()


def test_no_helper_runs_while_watching_could_not_start_and_a_reload_tries_both_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The helper only serves watch checks: when inotify cannot be started (here for real: every file
    descriptor taken, EMFILE), watching is off and the helper was started anyway, 40 MB for nothing until a
    restart; and a reload with the same settings did not try watching again. Now the helper follows the
    watch that runs, and a reload retries a watch that could not start."""
    import resource

    from tests.test_zygote import PROBE_HELPER

    caplog.set_level(logging.INFO, "agent.daemon")
    d, helpers = warm_daemon(tmp_path, lambda: PROBE_HELPER)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    taken: list[int] = []
    try:
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))  # then take what is left below
        with contextlib.suppress(OSError):
            while True:
                taken.append(os.open(os.devnull, os.O_RDONLY))
        d.start_watch()
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert d.watch is None and "watch: off, scheduled checks only: cannot start watching" in caplog.text
        d.follow_config()
        assert d.warm is None and helpers == []
        d.reload()  # the same configuration: the operator raised the limit, and reloads
        assert d.watch is not None and d.warm is helpers[0] and len(helpers) == 1
    finally:
        d.stop_watch()
        for warm in helpers:
            warm.close()


def test_a_reload_stops_what_the_new_config_no_longer_wants(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The kind: what the daemon runs beside its loop because of its configuration (the warm-start helper,
    the watches of each role) follows every reload, both ways; it used to stay until a restart. Here the
    real helper process (agent.zygote, with a probe for `gitops-agent`) and the real inotify watcher."""
    from agent import zygote
    from agent.paths import StatePaths
    from agent.watchpaths import RolePaths
    from agent.watchservice import write_set
    from tests.test_zygote import PROBE_HELPER, helper_env

    caplog.set_level(logging.INFO, "agent.daemon")
    helpers: list[zygote.WarmStart] = []

    def warm_start() -> zygote.WarmStart:
        warm = zygote.WarmStart(helper_env(), command=PROBE_HELPER)
        warm.ensure()
        helpers.append(warm)
        return warm

    def pid_of(warm: zygote.WarmStart) -> subprocess.Popen[str]:
        assert warm.zygote.proc is not None
        return warm.zygote.proc

    etc = tmp_path / "etc"
    etc.mkdir()
    path = tmp_path / "agent.yaml"
    base = {"host": "web01", "source": {"url": "repo"}, "state_dir": "state",
            "schedule": {"interval": "1h", "poll": "1m", "splay": "0s"}}

    def configure(**watch: object) -> None:
        path.write_text(yaml.safe_dump({**base, **watch}))

    configure(watch=True, watch_warm_start=True)
    write_set(StatePaths(tmp_path / "state"), {"web": RolePaths("web", frozenset({str(etc / "web.conf")})),
                                                "cron": RolePaths("cron", frozenset({str(etc / "crontab")}))},
              limited_to=None)
    fakes = Fakes()
    d = Daemon(path, config_mod.load(path), spawn=fakes.spawn, probe=fakes.probe, clock=Clock(1_000_000.0),
               warm_start=warm_start)
    d.start_watch()
    d.follow_config()
    try:
        assert d.watch is not None and set(d.watch.table) == {"web", "cron"} and d.watch.state.paths == 2
        first = pid_of(helpers[0])
        assert d.warm is helpers[0] and first.poll() is None
        # watch_warm_start off: the helper process ends at the reload
        configure(watch=True, watch_warm_start=False)
        d.reload()
        assert d.warm is None and first.wait(10) is not None
        assert "warm start: off (watch=true watch_warm_start=false): the helper is stopped" in caplog.text
        # back on: a new helper at the reload, not at the next restart
        configure(watch=True, watch_warm_start=True)
        d.reload()
        assert d.warm is helpers[1] and pid_of(helpers[1]).poll() is None
        # watch itself off: the helper (for watch checks only) ends with the watches
        second = pid_of(helpers[1])
        configure(watch=False, watch_warm_start=True)
        d.reload()
        assert d.warm is None and d.watch is None and second.wait(10) is not None
        # a role opted out (watch_exclude) is no longer watched from the reload on, whatever watch.json
        # (written by the last check, under the old configuration) still holds
        configure(watch=True, watch_exclude=["cron"])
        d.reload()
        assert d.watch is not None and set(d.watch.table) == {"web"}
        assert d.watch.state.paths == 1  # /etc/crontab's watch is gone, not only its role's name
        configure(watch=True)
        d.reload()
        assert set(d.watch.table) == {"web", "cron"}
        assert len(helpers) == 2
    finally:
        d.stop_watch()
        for warm in helpers:
            warm.close()
