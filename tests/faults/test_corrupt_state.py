"""Corrupt state: every state file that cannot be read (truncated, empty, the wrong JSON shape, binary, a
bad time) is moved aside for forensics, the agent starts from a fresh one, and the cycle that found it
sends an `error` report naming it. Never a traceback, never a stop of all reporting."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import invcache, runner
from tests.faults.conftest import Agent, Collector, cheap_repo, with_collector

BAD = {
    "truncated": b'{"last_commit": "4f2a", "converged": ["4f2a"',
    "empty": b"",
    "a list": b"[]",
    "binary": bytes(range(256)) * 4,
    "null": b"null",
}
BAD_STATE = {**BAD,
             "a bad time": json.dumps({"drift_seen": {"app|App config": "yesterday"}}).encode(),
             "wrong types": json.dumps({"converged": "4f2a", "recurring": {"4f2a": 5}}).encode()}
BAD_PAUSE = {**BAD,
             "a bad time": json.dumps({"reason": "maintenance", "until": "tomorrow noon"}).encode(),
             "wrong types": json.dumps({"reason": 42, "checks_too": "yes"}).encode()}


def quarantined(state_dir: Path, name: str) -> list[Path]:
    return sorted(state_dir.glob(f"{name}.corrupt-*"))


@pytest.mark.parametrize("case", list(BAD_STATE))
def test_an_unreadable_state_json_is_moved_aside_and_reported(agent: Callable[..., Agent], tmp_path: Path,
                                                               case: str) -> None:
    a = agent(tmp_path / "nowhere")  # no source: nothing but the state matters here
    a.state_dir.mkdir()
    (a.state_dir / "state.json").write_bytes(BAD_STATE[case])
    result = a.run("run", "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "error"
    (error,) = report["errors"]
    assert str(a.state_dir / "state.json") in error["message"] and "moved aside as state.json.corrupt-" in error["message"]
    (kept,) = quarantined(a.state_dir, "state.json")
    assert kept.read_bytes() == BAD_STATE[case] and kept.name in error["message"]
    assert json.loads((a.state_dir / "state.json").read_text())["last_commit"] is None  # started fresh
    if case == "truncated":  # the next cycle runs (and fails on the missing source)
        again = json.loads(a.run("run", "--json").stdout)
        assert [e["phase"] for e in again["errors"]] == ["fetch"] and "state.json" not in json.dumps(again)


@pytest.mark.parametrize("case", list(BAD_PAUSE))
def test_an_unreadable_pause_json_is_moved_aside_and_applies_stay_paused(agent: Callable[..., Agent],
                                                                         tmp_path: Path, case: str) -> None:
    a = agent(tmp_path / "nowhere")
    a.state_dir.mkdir()
    (a.state_dir / "pause.json").write_bytes(BAD_PAUSE[case])
    result = a.run("run", "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "error" and "pause.json" in report["errors"][0]["message"]
    (kept,) = quarantined(a.state_dir, "pause.json")
    assert kept.read_bytes() == BAD_PAUSE[case]
    pause = json.loads((a.state_dir / "pause.json").read_text())  # a valid pause of applies in its place
    assert pause["checks_too"] is False and pause["until"] is None and "gitops-agent resume" in pause["reason"]
    status = a.run("status")
    assert "Traceback" not in status.stderr and "paused" in status.stdout.lower()


@pytest.mark.ansible
def test_after_corrupt_state_the_error_is_delivered_and_the_next_cycle_starts_fresh(
        agent: Callable[..., Agent], collector: Collector, tmp_path: Path) -> None:
    repo = cheap_repo(tmp_path / "origin")
    a = agent(repo.path, **with_collector(collector))
    a.state_dir.mkdir()
    (a.state_dir / "state.json").write_bytes(b"\x00\x01garbage")
    (a.state_dir / "pause.json").write_text('{"reason": "disk swap", "until": "soon"}')
    first = a.run("run", "--json")
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr
    report = json.loads(first.stdout)
    assert [e["message"].split(":")[0] for e in report["errors"]] == [str(a.state_dir / "state.json"),
                                                                     str(a.state_dir / "pause.json")]
    second = a.run("run", "--json")  # enforce mode, intentional drift, but paused: checked, not applied
    assert second.returncode == 2, second.stderr
    assert json.loads(second.stdout)["status"] == "paused"
    assert not (tmp_path / "root/app.conf").exists()
    stored = collector.runs()
    assert set(stored) == {report["run_id"], json.loads(second.stdout)["run_id"]}
    assert stored[report["run_id"]]["status"] == "error"


def test_an_unreadable_last_run_json_is_no_previous_report(agent: Callable[..., Agent], tmp_path: Path) -> None:
    a = agent(tmp_path / "nowhere")
    a.state_dir.mkdir()
    (a.state_dir / "last_run.json").write_bytes(b'{"schema_version": 1, "run_id": ')
    status = a.run("status")
    assert status.returncode == 1 and "Traceback" not in status.stderr
    result = a.run("run", "--json")
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert any("last_run.json" in w and "moved aside" in w for w in report["warnings"])
    assert json.loads((a.state_dir / "last_run.json").read_text())["run_id"] == report["run_id"]
    assert len(quarantined(a.state_dir, "last_run.json")) == 1


def test_an_unreadable_cycle_record_is_moved_aside_and_named(agent: Callable[..., Agent], tmp_path: Path) -> None:
    a = agent(tmp_path / "nowhere")
    (a.state_dir / "cycles").mkdir(parents=True)
    (a.state_dir / "cycles/5d1c.json").write_bytes(b"\xff\xfe")
    report = json.loads(a.run("run", "--json").stdout)
    assert any("5d1c.json" in w and "unreported" in w for w in report["warnings"]), report["warnings"]
    assert len(list((a.state_dir / "cycles").glob("5d1c.json.corrupt-*"))) == 1


def test_a_damaged_inventory_cache_entry_is_dropped(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text("all:\n  hosts:\n    host1:\n")
    calls: list[int] = []

    def parse() -> str:
        calls.append(1)
        return "@all:\n  |--@ungrouped:\n  |  |--host1\n"

    kwargs = {"commit": "a" * 40, "inventory_name": "inventory", "host": "host1", "inventory": inventory,
              "parse": parse}
    cache = tmp_path / "cache"
    invcache.graph(cache, **kwargs)  # type: ignore[arg-type]
    (entry,) = cache.glob("*.graph")
    for garbage in (b"", b"\x00\xff" * 10, b"@all:\n  |--otherhost\n", entry.read_bytes()[:-3]):
        entry.write_bytes(garbage)
        assert invcache.graph(cache, **kwargs) == parse()  # type: ignore[arg-type]
    assert len(calls) == 1 + 2 * 4  # each damaged entry parsed again (the test's own call included)


def test_damaged_cached_facts_are_dropped(tmp_path: Path) -> None:
    facts = tmp_path / "facts"
    subset = facts / "bea0e3ec4c32132c"  # agent.gathering.cache_dir: one folder per gather_subset
    subset.mkdir(parents=True)
    (subset / "good").write_text('{"ansible_hostname": "h"}')
    (subset / "truncated").write_text('{"ansible_host')
    (subset / "binary").write_bytes(b"\x00\xff")
    (subset / "a-list").write_text("[]")
    (facts / "none").mkdir()  # the folder of runs where no play gathers: empty is fine
    (facts / "stray-file").write_text("{}")  # not the layout
    assert sorted(runner.drop_bad_facts(facts)) == ["bea0e3ec4c32132c/a-list", "bea0e3ec4c32132c/binary",
                                                    "bea0e3ec4c32132c/truncated", "stray-file"]
    assert sorted(p.name for p in facts.iterdir()) == ["bea0e3ec4c32132c", "none"]
    assert [p.name for p in subset.iterdir()] == ["good"]


def test_what_a_killed_git_left_is_cleared(tmp_path: Path) -> None:
    from agent.config import SourceConfig
    from agent.source import GitSource

    repo = cheap_repo(tmp_path / "origin")
    config = SourceConfig(url=str(repo.path), mirrors=(), ref="main", verify="none", trusted_keys=None,
                          allow_rewind=False, depth=1, keep_releases=3, timeout_s=30.0)
    source = GitSource(config, tmp_path / "state")
    first = source.sync(last_commit=None)
    (tmp_path / "state/repo/shallow.lock").write_text("")  # a fetch SIGKILLed mid-way leaves these
    (tmp_path / "state/repo/refs/gitops").mkdir(parents=True, exist_ok=True)
    (tmp_path / "state/repo/refs/gitops/fetched.lock").write_text("")
    second = repo.commit({"README": "two\n"}, "two")
    stuck = source.sync(last_commit=first.commit)
    assert stuck.offline and "git process may have crashed" in stuck.fetch_errors[0]  # every later cycle
    half = tmp_path / "state/releases" / f".{second[:12]}-x1y2"  # a checkout killed half-way
    (half / "playbooks").mkdir(parents=True)
    assert source.clear_leftovers() == []
    assert not (tmp_path / "state/repo/shallow.lock").exists() and not half.exists()
    assert source.sync(last_commit=first.commit).commit == second


def test_a_git_cache_git_cannot_open_is_moved_aside_and_fetched_anew(tmp_path: Path) -> None:
    from agent.config import SourceConfig
    from agent.source import GitSource

    repo = cheap_repo(tmp_path / "origin")
    config = SourceConfig(url=str(repo.path), mirrors=(), ref="main", verify="none", trusted_keys=None,
                          allow_rewind=False, depth=1, keep_releases=3, timeout_s=30.0)
    source = GitSource(config, tmp_path / "state")
    (tmp_path / "state").mkdir()
    (tmp_path / "state/repo").write_text("not a repository\n")
    (note,) = source.clear_leftovers()
    assert "git cache" in note and "moved aside as repo.corrupt-" in note
    assert source.sync(last_commit=None).commit == repo.head
