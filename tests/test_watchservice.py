"""agent.watchservice: the hand-off files between the cycle and the daemon, and the daemon's watcher
thread over a real inotify on a tmp directory (docs/watch.md). The live daemon test is
tests/test_watch_live.py."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from agent import watchservice
from agent.errors import AgentError
from agent.paths import StatePaths
from agent.report import Trigger
from agent.watchpaths import RolePaths
from agent.watchrules import OWN_CHANGES_GRACE_S
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


BAD_SETS = [
    (b"{", "watch.json: not JSON"),
    (b'{"version": 2, "roles": {}}', "not a version 1 watch set"),
    (b'{"version": true, "roles": {}}', "not a version 1 watch set"),
    (b'{"version": 1, "roles": {"web": {"paths": ["etc/x"]}}}', "role 'web': 'paths' must be a list of absolute"),
    (b'{"version": 1, "roles": {"web": {"paths": ["/etc/x\\u0000y"]}}}', "role 'web': 'paths' must be a list"),
    (b'\xff\xfe{"version": 1}', "watch.json: not JSON: 'utf-8' codec"),  # not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, "watch.json: not JSON: maximum recursion depth"),  # nested too deep
]


@pytest.mark.parametrize(("data", "message"), BAD_SETS)
def test_a_bad_watch_set_is_one_line_naming_the_file(tmp_path: Path, data: bytes, message: str) -> None:
    paths = StatePaths(tmp_path)
    paths.watch_set.write_bytes(data)
    with pytest.raises(AgentError, match=message) as caught:
        read_set(paths)
    assert "\n" not in str(caught.value)
    write_set(paths, roles(web=["/etc/web.conf"]), limited_to=["web"])  # the child replaces it
    assert read_set(paths) == roles(web=["/etc/web.conf"])


def test_a_bad_or_huge_watch_set_keeps_the_daemons_previous_set(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    state = StatePaths(tmp_path)
    write_set(state, roles(web=[str(tmp_path / "web.conf")]), limited_to=None)
    service = WatchService(state, threading.Event())
    try:
        service.reload()
        before = service.table
        for data, _ in BAD_SETS:
            state.watch_set.write_bytes(data)
            service.reload()  # one log line, never an exception out of the daemon's loop
            assert service.table == before
        monkeypatch.setattr(watchservice, "MAX_SET_BYTES", 100)
        state.watch_set.write_text(json.dumps({"version": 1, "roles": {}}) + " " * 200)
        service.reload()
        assert service.table == before
        with pytest.raises(AgentError, match=r"watch\.json: larger than 100 bytes"):
            read_set(state)
    finally:
        service.close()


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


def test_the_watcher_thread_survives_a_failure_of_any_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "web.conf"
    state = StatePaths(tmp_path / "state")
    state.root.mkdir()
    write_set(state, roles(web=[str(target)]), limited_to=None)
    wake = threading.Event()
    service = WatchService(state, wake, debounce_s=0.1)
    real_read, failures = service.watcher.read, [KeyError(7), RuntimeError("a bug")]

    def read(timeout_s: float | None) -> set[str]:
        if failures:
            raise failures.pop(0)
        return real_read(timeout_s)

    monkeypatch.setattr(service.watcher, "read", read)
    service.start()
    try:
        target.write_text("1\n")
        deadline = time.monotonic() + 10
        while failures and time.monotonic() < deadline:
            time.sleep(0.05)
        target.write_text("2\n")
        assert wake.wait(5)
        assert service._thread.is_alive()
        assert "the watcher failed: KeyError: 7; retrying" in caplog.text
        assert "the watcher failed: RuntimeError: a bug; retrying" in caplog.text
    finally:
        service.close()


def test_blind_tasks_are_shown_in_the_state_the_status_line_and_the_report(tmp_path: Path) -> None:
    """Tasks whose path is not known (no watch can see them) are said, per role, with their names as the
    cycle wrote them (redacted there): in watch-state.json (status --json), the status line, the report."""
    state = StatePaths(tmp_path / "state")
    state.root.mkdir()
    table = {"web": RolePaths("web", frozenset({str(tmp_path / "web.conf")}), ("Set a cron job", "Mount /srv")),
             "db": RolePaths("db", frozenset(), tuple(f"Secret {n} (no_log)" for n in range(24)))}
    write_set(state, table, limited_to=None)
    service = WatchService(state, threading.Event())
    service.start()
    try:
        data = json.loads(state.watch_state.read_text())
        assert data["blind"]["web"] == ["Set a cron job", "Mount /srv"] and len(data["blind"]["db"]) == 24
        line = status_line(data)
        assert "; 26 blind tasks (no path to watch: scheduled checks only): db: Secret 0 (no_log), " in line
        assert line.endswith("db: Secret 4 (no_log) and 21 more")
        info = report_info(state, Trigger.SCHEDULE)
        assert info is not None and info.blind_count == 26 and len(info.blind) == 20
        assert info.blind[0] == "db: Secret 0 (no_log)"
    finally:
        service.close()


def test_contested_paths_survive_a_restart_of_the_daemons_watcher(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "app.conf"
    target.write_text("x\n")
    state = StatePaths(tmp_path / "state")
    state.root.mkdir()
    write_set(state, roles(app=[str(target)]), limited_to=None)
    first = WatchService(state, threading.Event(), contested_flips=1)
    first.start()
    try:
        now = first.clock()
        first.contested.corrected(str(target), now - 2)
        first.contested.corrected(str(target), now - 1)  # one flip: contested at the bound of 1
        first.write_state()
    finally:
        first.close()
    assert json.loads(state.watch_contested.read_text())["paths"][str(target)]["contested_since"]
    second = WatchService(state, threading.Event(), contested_flips=1)
    second.start()
    try:
        assert json.loads(state.watch_state.read_text())["contested"] == {str(target): 1}
    finally:
        second.close()
    state.watch_contested.write_text("{not json")
    third = WatchService(state, threading.Event(), contested_flips=1)
    third.start()
    try:
        assert json.loads(state.watch_state.read_text())["contested"] == {}
        assert "counting contested paths from zero" in caplog.text
    finally:
        third.close()


def test_the_cycles_own_changes_are_read_at_its_end_even_when_the_thread_is_late(tmp_path: Path) -> None:
    """The race of a starved watcher thread: the agent's apply writes a managed file, the cycle ends,
    and the thread reads the event only after the grace. The service reads the queue when the cycle
    ends, so the write stays the cycle's own and starts no watch check."""
    target = tmp_path / "app.conf"
    target.write_text("0\n")
    state = StatePaths(tmp_path / "state")
    state.root.mkdir()
    write_set(state, roles(app=[str(target)]), limited_to=None)
    service = WatchService(state, threading.Event(), debounce_s=0.1)
    service.reload()  # armed, but the thread is not running yet: it comes late
    try:
        service.cycle_started(None)
        target.write_text("written by the apply\n")
        service.cycle_ended(None, None)
        time.sleep(1.3)  # past the 1 s grace
        service._thread.start()
        time.sleep(1.0)
        assert service.due_in() is None
        target.write_text("a hand edit\n")  # and a later change still counts
        wait_due(service)
        batch = service.take()
        assert batch is not None and batch.roles == ("app",)
    finally:
        service.close()


def test_a_tree_is_watched_below_its_top_and_the_cycles_own_writes_in_it_start_nothing(tmp_path: Path) -> None:
    top = tmp_path / "target" / "conf.d"
    (top / "sub" / "deeper").mkdir(parents=True)
    db = tmp_path / "target" / "db.conf"
    state = StatePaths(tmp_path / "state")
    state.root.mkdir()
    write_set(state, {"app": RolePaths("app", frozenset({str(top)}), (), frozenset({str(top)})),
                      "db": RolePaths("db", frozenset({str(db)}))}, limited_to=None)
    service = WatchService(state, threading.Event(), debounce_s=0.2)
    service.start()
    try:
        data = json.loads(state.watch_state.read_text())
        assert (data["watched"], data["directories"], data["trees"]) == (2, 4, 1)
        assert status_line(data).startswith("watch: on, 2 paths in 4 directories (1 trees watched below")
        deep = top / "sub" / "deeper" / "c.conf"
        deep.write_text("by hand\n")
        wait_due(service)
        batch = service.take()
        assert batch is not None and batch.roles == ("app",) and batch.paths == {str(deep)}
        # The watch check of app: its apply writes in the tree (Ansible's temp file, renamed over) are its
        # own, in a directory created by the apply too; db's hand edit is kept.
        service.cycle_started(batch)
        (top / "new").mkdir()
        (top / "new" / ".ansible_tmp1.conf").write_text("applied\n")
        os.replace(top / "new" / ".ansible_tmp1.conf", top / "new" / "x.conf")
        deep.write_text("c\n")
        db.write_text("by hand\n")
        time.sleep(0.5)
        service.cycle_ended(batch, None)
        wait_due(service)
        batch = service.take()
        assert batch is not None and batch.roles == ("db",) and batch.paths == {str(db)}
        time.sleep(OWN_CHANGES_GRACE_S + 0.2)
        (top / "new" / "x.conf").write_text("by hand\n")  # the directory the apply made is watched
        wait_due(service)
        batch = service.take()
        assert batch is not None and batch.roles == ("app",)
    finally:
        service.close()
