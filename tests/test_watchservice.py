"""agent.watchservice: the hand-off files between the cycle and the daemon, and the daemon's watcher
thread over a real inotify on a tmp directory (docs/watch.md). The live daemon test is
tests/test_watch_live.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from agent.errors import AgentError
from agent.paths import StatePaths
from agent.report import Trigger
from agent.watchpaths import RolePaths
from agent.watchservice import WatchService, read_set, report_info, status_line, write_set


def roles(**paths: list[str]) -> dict[str, RolePaths]:
    return {role: RolePaths(role, frozenset(p)) for role, p in paths.items()}


def test_a_limited_check_replaces_only_its_roles_and_excluded_roles_are_left_out(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    assert read_set(paths) is None
    write_set(paths, roles(web=["/etc/web.conf"], db=["/etc/db.conf"], cron=["/etc/crontab"]),
              limited_to=None, exclude=["cron"])
    assert read_set(paths) == roles(web=["/etc/web.conf"], db=["/etc/db.conf"])
    before = paths.watch_set.stat().st_mtime_ns
    write_set(paths, roles(web=["/etc/web.conf"]), limited_to=["web"])
    assert paths.watch_set.stat().st_mtime_ns == before  # the same set: not rewritten
    write_set(paths, roles(web=["/etc/web.conf", "/etc/web.d"]), limited_to=["web"])
    assert read_set(paths) == roles(web=["/etc/web.conf", "/etc/web.d"], db=["/etc/db.conf"])
    write_set(paths, roles(db=["/etc/db2.conf"]), limited_to=None)  # a full check: the whole set
    assert read_set(paths) == roles(db=["/etc/db2.conf"])


@pytest.mark.parametrize(("text", "message"), [
    ("{", "watch.json: not JSON"),
    ('{"version": 2, "roles": {}}', "not a version 1 watch set"),
    ('{"version": 1, "roles": {"web": {"paths": ["etc/x"]}}}', "role 'web': 'paths' must be a list of absolute"),
])
def test_a_bad_watch_set_is_one_line_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    paths = StatePaths(tmp_path)
    paths.watch_set.write_text(text)
    with pytest.raises(AgentError, match=message) as caught:
        read_set(paths)
    assert "\n" not in str(caught.value)


def test_report_info_and_status_line_from_the_daemons_state(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    assert report_info(paths, Trigger.WATCH) is None  # no daemon watches
    changed = [f"/etc/f{n:02}" for n in range(25)]
    state = {"on": True, "watched": 10, "directories": 3, "unwatched": ["/srv/a", "/srv/b"],
             "unwatched_roles": ["db"], "reason": "fs.inotify.max_user_watches (8192) was reached",
             "contested": {"/etc/app.conf": 3}, "changed": changed}
    paths.watch_state.write_text(json.dumps(state))
    info = report_info(paths, Trigger.WATCH)
    assert info is not None and info.changed == tuple(changed[:20]) and info.changed_count == 25
    assert (info.watched, info.unwatched, info.unwatched_roles) == (10, 2, ("db",))
    assert [(c.path, c.flips) for c in info.contested] == [("/etc/app.conf", 3)]
    scheduled = report_info(paths, Trigger.SCHEDULE)
    assert scheduled is not None and scheduled.changed == () and scheduled.unwatched == 2
    assert status_line(state) == (
        "watch: on, 10 paths in 3 directories; 2 paths NOT watched: fs.inotify.max_user_watches (8192) was "
        "reached: scheduled checks only for roles db; contested (not corrected on change): /etc/app.conf "
        "(3 flips)")
    assert status_line({"on": False, "reason": "cannot start watching: inotify_init failed"}) == (
        "watch: off (cannot start watching: inotify_init failed): scheduled checks only")


def wait_due(service: WatchService, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        due = service.due_in()
        if due == 0:
            return
        time.sleep(0.05)
    raise AssertionError("no batch became due")


def test_the_service_batches_per_role_ignores_its_own_cycle_and_re_arms(tmp_path: Path) -> None:
    target = tmp_path / "target"
    (target / "web").mkdir(parents=True)
    (target / "db").mkdir()
    state = StatePaths(tmp_path / "state")
    state.root.mkdir()
    write_set(state, roles(web=[str(target / "web/a.conf")], db=[str(target / "db/b.conf")]), limited_to=None)
    wake = threading.Event()
    service = WatchService(state, wake, debounce_s=0.2)
    service.start()
    try:
        data = json.loads(state.watch_state.read_text())
        assert (data["watched"], data["directories"]) == (2, 2)
        for n in range(500):  # a burst: one batch, one role
            (target / "web/a.conf").write_text(f"{n}\n")
        assert wake.wait(5)
        wait_due(service)
        batch = service.take()
        assert batch is not None and batch.roles == ("web",) and batch.paths == {str(target / "web/a.conf")}
        assert service.take() is None
        # The cycle's own writes of what it checks start nothing; another role's change is kept.
        service.cycle_started(batch)
        assert json.loads(state.watch_state.read_text())["changed"] == [str(target / "web/a.conf")]
        (target / "web/a.conf").write_text("applied\n")
        (target / "db/b.conf").write_text("by hand\n")
        time.sleep(0.5)
        service.cycle_ended(batch, None)
        wait_due(service)
        batch = service.take()
        assert batch is not None and batch.roles == ("db",)
        # A new managed set re-arms: the web path is no longer watched.
        write_set(state, roles(db=[str(target / "db/b.conf")]), limited_to=None)
        service.reload()
        assert json.loads(state.watch_state.read_text())["watched"] == 1
        (target / "web/a.conf").write_text("gone from the set\n")
        time.sleep(0.6)
        assert service.due_in() is None
    finally:
        service.close()
    assert not state.watch_state.exists()


def test_a_cap_on_watches_leaves_paths_unwatched_and_says_which_roles(tmp_path: Path) -> None:
    state = StatePaths(tmp_path / "state")
    state.root.mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_set(state, roles(web=[str(tmp_path / "a/x")], db=[str(tmp_path / "b/y")]), limited_to=None)
    service = WatchService(state, threading.Event(), max_watches=1)
    service.start()
    try:
        data = json.loads(state.watch_state.read_text())
        assert data["unwatched"] == [str(tmp_path / "b/y")] and data["unwatched_roles"] == ["db"]
        assert "cap of 1 directory watches" in data["reason"]
        info = report_info(state, Trigger.SCHEDULE)
        assert info is not None and info.unwatched == 1
    finally:
        service.close()
