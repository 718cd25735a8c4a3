"""agent.watchrules: debounce/coalescing with the agent's own changes dropped, and contested paths
(docs/watch.md, 4 to 6). The clock is the `now` the tests pass: nothing sleeps."""

from __future__ import annotations

import pytest

from agent.errors import AgentError
from agent.watchrules import ContestedPaths, Debouncer


def test_a_burst_of_changes_is_one_batch_after_a_quiet_interval() -> None:
    d = Debouncer(quiet_s=2, max_wait_s=30)
    assert d.due_at() is None and d.take(100) == frozenset()
    for n in range(500):  # a package upgrade touching 500 watched files within 1 s
        assert d.changed(f"/usr/share/doc/p{n % 50}", 100 + n / 500)
    assert d.due_at() == pytest.approx(100 + 499 / 500 + 2)
    assert d.take(102.5) == frozenset()  # not quiet long enough yet
    batch = d.take(103)
    assert batch == {f"/usr/share/doc/p{n}" for n in range(50)}
    assert d.take(200) == frozenset() and d.due_at() is None  # taken once


def test_each_change_restarts_the_quiet_interval_up_to_the_max_wait() -> None:
    d = Debouncer(quiet_s=2, max_wait_s=10)
    for t in range(0, 20):  # a file rewritten every second, forever
        d.changed("/etc/app.conf", float(t))
        if t < 10:
            assert d.take(float(t)) == frozenset()
        if t == 10:
            assert d.due_at() == 10.0
            assert d.take(10.0) == {"/etc/app.conf"}
    assert d.due_at() == 11 + 10  # the next batch started at its first change after the last take


def test_the_running_cycles_own_changes_are_dropped_until_the_grace_after_it_ends() -> None:
    d = Debouncer(quiet_s=2, max_wait_s=30, grace_s=1)
    d.changed("/etc/app.conf", 0)
    d.cycle_started(1)  # a full check: it sees the pending change itself
    assert d.due_at() is None
    assert not d.changed("/etc/app.conf", 5)  # the apply writes it
    d.cycle_ended(10)
    assert not d.changed("/etc/app.conf", 10.5)  # still in the kernel's queue when the child exited
    assert d.changed("/etc/app.conf", 11.5)  # a hand edit after the grace
    assert d.take(13.5) == {"/etc/app.conf"}


def test_a_cycle_limited_to_some_paths_keeps_the_changes_of_the_others() -> None:
    d = Debouncer(quiet_s=2, max_wait_s=30, grace_s=1)
    d.changed("/etc/web.conf", 0)
    d.changed("/etc/db.conf", 0)
    d.cycle_started(1, covered={"/etc/web.conf"})  # a watch check of the web role only
    assert not d.changed("/etc/web.conf", 2)
    assert d.changed("/etc/db.conf", 3)  # another role's path, edited by hand during the cycle
    d.cycle_ended(4)
    assert d.take(5) == {"/etc/db.conf"}


def test_debouncer_settings_are_checked() -> None:
    with pytest.raises(AgentError, match="watch debounce must be a positive number of seconds, got 0"):
        Debouncer(quiet_s=0)
    with pytest.raises(AgentError, match=r"watch max wait \(1s\) must not be shorter than the debounce \(2s\)"):
        Debouncer(quiet_s=2, max_wait_s=1)


def test_a_path_put_back_again_and_again_becomes_contested_after_the_bound() -> None:
    c = ContestedPaths(flips=3, window_s=3600)
    path = "/etc/resolv.conf"
    assert not c.corrected(path, 0)  # the first correction is no flip
    assert not c.corrected(path, 60)  # flip 1: someone put it back
    assert not c.corrected(path, 120)  # flip 2
    assert not c.is_contested(path, 120)
    assert c.corrected(path, 180)  # flip 3: contested now, said once
    assert c.is_contested(path, 181) and c.contested(181) == {path: 3}
    assert c.changed(path, 240)  # its changes start no check any more: no loop
    assert not c.changed("/etc/other.conf", 240)
    assert c.contested(240) == {path: 3}


def test_corrections_spread_wider_than_the_window_are_no_fight() -> None:
    c = ContestedPaths(flips=2, window_s=100)
    for t in (0, 150, 300, 450):
        assert not c.corrected("/etc/motd", t)
    assert c.contested(450) == {}


def test_a_contested_path_is_released_after_a_quiet_window_or_a_new_commit() -> None:
    c = ContestedPaths(flips=1, window_s=100)
    c.corrected("/etc/a", 0)
    assert c.corrected("/etc/a", 10)
    assert c.changed("/etc/a", 90)  # the other writer is still at it: contested for another window
    assert c.is_contested("/etc/a", 189)
    assert not c.is_contested("/etc/a", 190)  # a whole window without a change
    assert not c.corrected("/etc/a", 200)  # counted from zero again
    c.corrected("/etc/b", 0)
    assert c.corrected("/etc/b", 1)
    c.forget(["/etc/b"])  # a new commit changed its role
    assert c.contested(2) == {}
    for path in ("/etc/conf.d/sub/x.conf", "/etc/conf.d.old/y", "/etc/conf.d"):  # in a tree, beside it
        c.corrected(path, 0)
        assert c.corrected(path, 1)
    c.forget_below(["/etc/conf.d"])  # a new commit changed the tree's role
    assert set(c.contested(2)) == {"/etc/conf.d.old/y", "/etc/conf.d"}


def test_contested_settings_are_checked() -> None:
    with pytest.raises(AgentError, match="watch contested flips must be 1 or more, got 0"):
        ContestedPaths(flips=0)
    with pytest.raises(AgentError, match="watch contested window must be a positive number of seconds"):
        ContestedPaths(window_s=-1)


def test_a_change_after_the_bound_of_corrections_is_contested_before_its_check() -> None:
    """flipped(): the change that follows `flips` corrections within the window makes the path contested
    at once, so that its check only reports; a path corrected less often, or long ago, is not."""
    c = ContestedPaths(flips=2, window_s=3600)
    assert not c.flipped("/etc/app.conf", 0)  # never corrected: a first hand edit
    c.corrected("/etc/app.conf", 10)
    assert not c.flipped("/etc/app.conf", 20)  # one correction: below the bound
    c.corrected("/etc/app.conf", 30)
    assert c.flipped("/etc/app.conf", 40)
    assert c.contested(40) == {"/etc/app.conf": 2}
    assert c.changed("/etc/app.conf", 50)  # its changes start no check now
    assert not c.flipped("/etc/app.conf", 60)  # already contested: said once
    c.corrected("/etc/other.conf", 0)
    c.corrected("/etc/other.conf", 10)
    assert not c.flipped("/etc/other.conf", 10 + 3600)  # both corrections are out of the window


def test_contested_counts_carry_across_a_restart_on_the_wall_clock() -> None:
    """to_json/load_json: times are kept as wall-clock seconds, so a new process (another monotonic
    clock) goes on counting; entries older than the window are dropped; a bad file is an AgentError."""
    c = ContestedPaths(flips=2, window_s=100)
    c.corrected("/etc/a", 10)
    c.corrected("/etc/a", 20)
    assert c.corrected("/etc/a", 30)  # contested
    c.corrected("/etc/b", 40)
    data = c.to_json(now=50, wall_now=1_000_050)
    assert data["paths"]["/etc/a"] == {"corrections": [1_000_010, 1_000_020, 1_000_030],
                                       "contested_since": 1_000_030, "last_change": 1_000_030}
    restarted = ContestedPaths(flips=2, window_s=100)
    restarted.load_json(data, now=5, wall_now=1_000_060)  # 10 s later, on a clock that started again
    assert restarted.contested(5) == {"/etc/a": 2} and restarted.is_contested("/etc/a", 5)
    assert restarted.flipped("/etc/b", 5) is False and not restarted.is_contested("/etc/b", 5)
    late = ContestedPaths(flips=2, window_s=100)
    late.load_json(data, now=0, wall_now=1_000_200)  # past the window: nothing kept
    assert late.contested(0) == {} and late.to_json(0, 1_000_200) == {"version": 1, "paths": {}}
    for bad in ({"version": 2, "paths": {}}, {"version": 1, "paths": {"/etc/a": {"corrections": ["x"]}}},
                {"version": 1, "paths": {"/etc/a": 3}}, [1]):
        with pytest.raises(AgentError, match=r"^contested paths: "):
            ContestedPaths().load_json(bad, now=0, wall_now=0)
