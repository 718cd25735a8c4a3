"""The commit beacon's agent side: the daemon's probe asks the collector, holds a new head for the commit
splay, falls back to Git at the slower pace when the collector is away, and the daemon runs a cycle (the
only Git fetch) only when the head moves. One test asks a real collector watching a real repository."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from agent import beacon, config
from agent.beacon import BeaconProbe, commit_splay_offset
from agent.daemon import CycleOutcome, Daemon
from agent.errors import ConfigError
from agent.report import Status, Trigger
from tests.live_collector import CollectorProcess, fresh_database, token

A, B = "a" * 40, "b" * 40


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Collector:
    """What the collector's heads endpoint answers, call by call (the HTTP side is tested for real below)."""

    def __init__(self) -> None:
        self.head: str | None = A
        self.down = False
        self.status: int | None = None
        self.asked: list[str | None] = []

    def __call__(self, etag: str | None) -> tuple[int, str | None, str | None]:
        self.asked.append(etag)
        if self.down:
            raise httpx.ConnectError("connection refused")
        if self.status is not None:
            return self.status, None, None
        if etag == f'"{self.head}"':
            return 304, etag, None
        return 200, f'"{self.head}"', self.head


class Git:
    def __init__(self) -> None:
        self.head = A
        self.asked = 0

    def __call__(self) -> str | None:
        self.asked += 1
        return self.head


def make(splay_s: float = 0.0) -> tuple[BeaconProbe, Collector, Git, Clock]:
    collector, git, clock = Collector(), Git(), Clock()
    return BeaconProbe(collector, git, 600.0, splay_s, clock=clock), collector, git, clock


def test_asks_the_collector_with_its_etag_and_never_git() -> None:
    probe, collector, git, _ = make()
    assert [probe(), probe(), probe()] == [A, A, A]
    assert collector.asked == [None, f'"{A}"', f'"{A}"']
    collector.head = B
    assert probe() == B
    assert git.asked == 0


def test_a_new_head_waits_for_the_hosts_commit_splay() -> None:
    probe, collector, _, clock = make(splay_s=120.0)
    probe()
    clock.now += 1000
    assert probe() == A  # a head seen long ago
    collector.head = B
    assert probe() is None
    clock.now += 119
    assert probe() is None
    clock.now += 1
    assert probe() == B
    offsets = {commit_splay_offset(f"web{i:03d}", 300) for i in range(200)}
    assert len(offsets) > 100 and all(0 <= o < 300 for o in offsets)
    assert commit_splay_offset("web001", 300) == commit_splay_offset("web001", 300)
    assert commit_splay_offset("web001", 0) == 0.0


@pytest.mark.parametrize("failure", ["down", 500, 503, 429, 502])
def test_collector_away_falls_back_to_git_at_the_slower_pace(failure: str | int,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    probe, collector, git, clock = make()
    assert probe() == A
    if failure == "down":
        collector.down = True
    else:
        collector.status = int(failure)
    git.head = B
    with caplog.at_level(logging.WARNING):
        assert probe() == B  # the first failure asks Git at once
        for _ in range(9):
            clock.now += 60
            assert probe() is None  # then not before fallback_poll
    assert git.asked == 1
    assert sum("does not answer" in r.message for r in caplog.records) == 1
    clock.now += 60
    assert probe() == B and git.asked == 2
    collector.down, collector.status, collector.head = False, None, B
    clock.now += 60
    assert probe() == B and git.asked == 2  # back on the beacon at its first answer


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refusals_are_configuration_errors_logged_once_an_hour(status: int,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    probe, collector, git, clock = make()
    collector.status = status
    with caplog.at_level(logging.WARNING):
        for _ in range(60):
            probe()
            clock.now += 60
    assert sum("refuses" in r.message for r in caplog.records) == 1
    assert git.asked == 6  # every fallback_poll (10 min) in the hour


def test_the_daemon_runs_a_cycle_only_when_the_head_moves(tmp_path: Path) -> None:
    """Git requests: the fallback probe's and the cycles' fetches. With the beacon, 60 polls of an unchanged
    head cost none; one push costs one cycle (one fetch)."""
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"host": "web01", "source": {"url": "repo"}, "state_dir": "state",
                                    "collector": {"url": "http://127.0.0.1:1", "beacon": True},
                                    "schedule": {"interval": "1d", "poll": "1m", "splay": "0s"}}))
    probe, collector, git, clock = make()
    cycles: list[Trigger] = []

    def spawn(trigger: Trigger, check_only: bool) -> CycleOutcome:
        cycles.append(trigger)
        return CycleOutcome(Status.IN_SYNC, collector.head)

    d = Daemon(path, config.load(path), spawn=spawn, probe=probe, clock=clock, last_commit=A)
    for _ in range(60):
        d.run_once()
        clock.now += 60
    assert cycles == [] and git.asked == 0
    collector.head = B
    for _ in range(5):
        d.run_once()
        clock.now += 60
    assert cycles == [Trigger.NEW_COMMIT] and git.asked == 0


@pytest.mark.parametrize(("data", "message"), [
    ({"collector": {"beacon": True}}, "'collector.beacon' needs 'collector.url'"),
    ({"collector": {"url": "http://c", "beacon": "yes"}}, "'collector.beacon': expected true or false"),
    ({"schedule": {"poll": "5m", "fallback_poll": "1m"}}, "'schedule.fallback_poll' must be at least"),
    ({"schedule": {"fallback_poll": "soon"}}, "'schedule.fallback_poll': 'soon' is not a duration"),
    ({"schedule": {"interval": "10m", "commit_splay": "1h"}}, "'schedule.commit_splay' must be at most"),
])
def test_beacon_keys_are_checked(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        config.validate({"source": {"url": "x"}, **data})
    assert "\n" not in str(e.value)


def test_beacon_off_or_a_commit_id_keeps_the_git_probe(tmp_path: Path) -> None:
    def git() -> str | None:
        return None

    off = config.validate({"source": {"url": "x"}}, base=tmp_path)
    assert beacon.probe_for(off, git) is git
    pinned = config.validate({"source": {"url": "x", "ref": A}, "collector": {"url": "http://c",
                                                                             "beacon": True}}, base=tmp_path)
    assert beacon.probe_for(pinned, git) is git


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_against_a_real_collector_watching_a_real_repository(tmp_path: Path) -> None:
    repo = tmp_path / "site"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "f").write_text("1")
    _git(repo, "add", "f")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "one")
    head = _git(repo, "rev-parse", "HEAD")
    with fresh_database("sqlite", tmp_path) as db_url:
        secret = token(db_url, "web01")
        token_file = tmp_path / "token"
        token_file.write_text(secret)
        token_file.chmod(0o600)
        server = CollectorProcess(db_url, None, "--heads-source", f"{repo}#main", "--heads-poll", "1s").start()
        try:
            cfg = config.validate({"host": "web01", "source": {"url": str(repo)},
                                   "collector": {"url": server.url, "token_file": str(token_file),
                                                 "beacon": True}}, base=tmp_path)
            ask = beacon.http_ask(cfg)
            for _ in range(100):  # the leader's first poll
                status, etag, commit = ask(None)
                if status == 200:
                    break
                time.sleep(0.1)
            assert (status, etag, commit) == (200, f'"{head}"', head)
            assert ask(etag)[0] == 304
            wrong = config.validate({"host": "web01", "source": {"url": str(tmp_path / "other")},
                                     "collector": {"url": server.url, "token_file": str(token_file),
                                                   "beacon": True}}, base=tmp_path)
            assert beacon.http_ask(wrong)(None)[0] == 404
        finally:
            server.stop()
