"""agent.watcher on a real tmp directory and the real kernel inotify: edits, rename-over, a directory
deleted and recreated or moved away, a parent that appears later, and the watch limit (a cap, since
lowering fs.inotify.max_user_watches needs root and is machine-wide)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import AgentError
from agent.watcher import Watcher
from agent.watchpaths import RolePaths, roles_of
from agent.watchrules import Debouncer


@pytest.fixture
def watcher() -> Iterator[Watcher]:
    with Watcher() as w:
        yield w


def changes(w: Watcher) -> set[str]:
    """Every change the kernel has queued for us by now (inotify queues at the syscall)."""
    found = w.read(0.1)
    while more := w.read(0):
        found |= more
    return found


def test_an_edit_in_place_and_a_mode_change_are_seen_and_an_unmanaged_sibling_is_not(
        tmp_path: Path, watcher: Watcher) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("port=80\n")
    state = watcher.watch([str(conf)])
    assert (state.paths, state.directories, state.unwatched) == (1, 1, ())
    (tmp_path / "other.conf").write_text("x")
    assert changes(watcher) == set()
    with conf.open("a") as f:
        f.write("debug=1\n")
    assert changes(watcher) == {str(conf)}
    conf.chmod(0o600)
    assert changes(watcher) == {str(conf)}


def test_an_editor_style_replace_is_seen_and_the_watch_survives_it(tmp_path: Path, watcher: Watcher) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("port=80\n")
    watcher.watch([str(conf)])
    tmp = tmp_path / ".app.conf.swp"
    tmp.write_text("port=81\n")
    assert changes(watcher) == set()  # the temp file is nobody's
    os.replace(tmp, conf)
    assert changes(watcher) == {str(conf)}
    conf.write_text("port=82\n")  # the new inode is seen too: nothing had to be re-armed
    assert changes(watcher) == {str(conf)}


def test_a_directory_deleted_and_recreated_is_watched_again(tmp_path: Path, watcher: Watcher) -> None:
    app = tmp_path / "etc" / "app"
    app.mkdir(parents=True)
    conf = app / "app.conf"
    conf.write_text("a")
    watcher.watch([str(conf), str(app)])
    shutil.rmtree(app)
    assert changes(watcher) == {str(conf), str(app)}
    assert watcher.state().directories == 1  # app.conf now waits at etc/ for "app" to come back
    app.mkdir()
    assert changes(watcher) == {str(conf), str(app)}
    assert watcher.state().directories == 2
    conf.write_text("b")
    assert changes(watcher) == {str(conf)}
    assert watcher.state().paths == 2


def test_a_directory_moved_away_is_not_followed(tmp_path: Path, watcher: Watcher) -> None:
    app = tmp_path / "app"
    app.mkdir()
    conf = app / "app.conf"
    conf.write_text("a")
    watcher.watch([str(conf)])
    app.rename(tmp_path / "app.old")
    assert changes(watcher) == {str(conf)}
    (tmp_path / "app.old" / "app.conf").write_text("b")  # no longer the managed path
    assert changes(watcher) == set()
    app.mkdir()
    assert changes(watcher) == {str(conf)}
    conf.write_text("c")
    assert changes(watcher) == {str(conf)}


def test_a_path_whose_parents_do_not_exist_yet_is_watched_from_its_nearest_ancestor(
        tmp_path: Path, watcher: Watcher) -> None:
    conf = tmp_path / "a" / "b" / "c.conf"
    state = watcher.watch([str(conf)])
    assert (state.paths, state.directories) == (1, 1)
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert str(conf) in changes(watcher)
    conf.write_text("x")
    assert changes(watcher) == {str(conf)}


def test_a_new_managed_set_adds_and_drops_watches(tmp_path: Path, watcher: Watcher) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    first, second = tmp_path / "one" / "f", tmp_path / "two" / "f"
    assert watcher.watch([str(first)]).directories == 1
    assert watcher.watch([str(second)]).directories == 1
    first.write_text("x")
    second.write_text("x")
    assert changes(watcher) == {str(second)}


def test_past_the_watch_limit_paths_are_unwatched_said_and_retried(tmp_path: Path) -> None:
    dirs = [tmp_path / f"d{n}" for n in range(3)]
    for d in dirs:
        d.mkdir()
    paths = [str(d / "f") for d in dirs]
    with Watcher(max_watches=2) as w:
        state = w.watch(paths)
        assert (state.paths, state.directories) == (2, 2)
        assert state.unwatched == (paths[2],)
        assert state.reason == "the watcher's cap of 2 directory watches was reached"
        state = w.watch(paths[1:])
        assert (state.paths, state.unwatched, state.reason) == (2, (), None)


def test_paths_must_be_absolute_and_normalised(watcher: Watcher) -> None:
    for bad in ("etc/app.conf", "/etc//app.conf", "/etc/app/"):
        with pytest.raises(AgentError, match="is not an absolute, normalised path"):
            watcher.watch([bad])


def test_a_queue_overflow_counts_every_managed_path_as_changed(tmp_path: Path, watcher: Watcher) -> None:
    queued = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    busy, quiet = tmp_path / "a" / "busy.conf", tmp_path / "b" / "quiet.conf"
    watcher.watch([str(busy), str(quiet)])
    fd = os.open(busy, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for n in range(queued // 2 + 100):  # each round queues MODIFY then ATTRIB (never merged), unread
            os.write(fd, b"x")
            os.fchmod(fd, 0o600 if n % 2 else 0o644)
    finally:
        os.close(fd)
    assert changes(watcher) == {str(busy), str(quiet)}  # events were lost: everything may have changed
    quiet.write_text("x")  # and the watches are in place again
    assert changes(watcher) == {str(quiet)}


def test_a_burst_of_500_changed_files_is_one_batch_for_one_role(tmp_path: Path, watcher: Watcher) -> None:
    docs = [tmp_path / f"doc{n:03}" for n in range(500)]
    table = {"base": RolePaths("base", frozenset(str(d) for d in docs)),
             "web": RolePaths("web", frozenset({str(tmp_path / "nginx.conf")}))}
    assert watcher.watch(set().union(*(r.paths for r in table.values()))).directories == 1
    debounce = Debouncer(quiet_s=2, max_wait_s=30)
    for d in docs:  # a package upgrade rewrites them
        d.write_text("new")
    for path in changes(watcher):
        debounce.changed(path, 100.0)
    batch = debounce.take(102.0)
    assert len(batch) == 500
    assert roles_of(batch, table) == {"base"}


def test_a_file_in_the_way_of_a_managed_path_is_watched_until_a_directory_replaces_it(
        tmp_path: Path, watcher: Watcher) -> None:
    blocker = tmp_path / "conf.d"
    blocker.write_text("a file where the playbook wants a directory")
    managed = blocker / "app.conf"
    assert watcher.watch([str(managed)]).paths == 1  # watched from tmp_path, by the name conf.d
    blocker.unlink()
    blocker.mkdir()
    assert str(managed) in changes(watcher)
    managed.write_text("x")
    assert changes(watcher) == {str(managed)}


@pytest.mark.parametrize("order", ["link first", "directory first"])
def test_one_directory_by_two_paths_is_one_watch_that_both_keep_and_drop(
        tmp_path: Path, watcher: Watcher, order: str) -> None:
    """/var/run -> /run (or a bind mount): the kernel gives one inode one wd, whichever path named it."""
    (tmp_path / "run").mkdir()
    (tmp_path / "var").mkdir()
    (tmp_path / "var/run").symlink_to(tmp_path / "run")
    by_link, by_dir = str(tmp_path / "var/run/a.pid"), str(tmp_path / "run/b.conf")
    first, second = (by_link, by_dir) if order == "link first" else (by_dir, by_link)
    assert watcher.watch({first, second}).directories == 1
    (tmp_path / "run/a.pid").write_text("1\n")
    (tmp_path / "run/b.conf.tmp").write_text("x\n")
    os.rename(tmp_path / "run/b.conf.tmp", tmp_path / "run/b.conf")  # a rename-over
    assert changes(watcher) == {by_link, by_dir}
    assert watcher.watch({first}).directories == 1
    assert watcher.watch(set()).directories == 0
    for again in ({second}, {first, second}, {first}):  # no stale wd for either path
        watcher.watch(again)
        (tmp_path / "run/a.pid").write_text("2\n")
        (tmp_path / "run/b.conf").write_text("2\n")
        assert changes(watcher) == again
    shutil.rmtree(tmp_path / "run")  # the directory goes: both paths changed and wait at their parents
    (tmp_path / "run").mkdir()
    changes(watcher)
    watcher.watch({first, second})
    (tmp_path / "run/b.conf").write_text("3\n")
    assert by_dir in changes(watcher)


# -- the race class of rename-over, recreation and re-arming: the kernel's events queued before we read
# them (what a loaded machine does to the watcher thread), never a lost change or a dead watch ----------

def test_editor_saves_in_quick_succession_are_each_seen_and_the_last_inode_is_watched(
        tmp_path: Path, watcher: Watcher) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("0\n")
    watcher.watch([str(conf)])
    for n in range(1, 4):  # three saves queued before one read
        swap = tmp_path / f".app.conf.{n}.swp"
        swap.write_text(f"{n}\n")
        os.replace(swap, conf)
    assert changes(watcher) == {str(conf)}
    for n in range(4, 7):  # and each save seen when read one by one
        swap = tmp_path / ".app.conf.swp"
        swap.write_text(f"{n}\n")
        os.replace(swap, conf)
        assert changes(watcher) == {str(conf)}, n
    with conf.open("a") as f:  # the inode renamed in last is the one watched (through its parent)
        f.write("edited\n")
    assert changes(watcher) == {str(conf)}


def test_a_directory_swapped_for_a_new_one_before_the_watcher_reads_is_watched_again(
        tmp_path: Path, watcher: Watcher) -> None:
    """A deployment's swap (mv conf.d conf.d.old; mv conf.d.new conf.d) and a delete + recreate with
    the file written again, both done before the watcher reads: the changes are seen and the new
    directory is the one watched afterwards."""
    confd = tmp_path / "conf.d"
    confd.mkdir()
    conf = confd / "a.conf"
    conf.write_text("old\n")
    watcher.watch([str(conf)])
    new = tmp_path / "conf.d.new"
    new.mkdir()
    (new / "a.conf").write_text("new\n")
    os.rename(confd, tmp_path / "conf.d.old")
    os.rename(new, confd)
    assert changes(watcher) == {str(conf)}
    (tmp_path / "conf.d.old" / "a.conf").write_text("the old tree is nobody's\n")
    assert changes(watcher) == set()
    conf.write_text("edited in the new tree\n")
    assert changes(watcher) == {str(conf)}
    shutil.rmtree(confd)
    confd.mkdir()
    conf.write_text("recreated\n")
    assert changes(watcher) == {str(conf)}
    conf.write_text("edited in the recreated tree\n")
    assert changes(watcher) == {str(conf)}
    assert watcher.state().directories == 1 and watcher.state().paths == 1


def test_a_new_managed_set_armed_while_events_wait_in_the_queue(tmp_path: Path, watcher: Watcher) -> None:
    """A new commit's set arrives (watch()) while a rename-over of a kept path and an edit of a dropped
    one wait unread: the kept path's change is still reported, the dropped one's is not, the new path
    is watched, and a directory dropped and added back is watched again."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    kept, dropped, added = tmp_path / "a/kept.conf", tmp_path / "b/dropped.conf", tmp_path / "a/added.conf"
    for path in (kept, dropped, added):
        path.write_text("0\n")
    watcher.watch([str(kept), str(dropped)])
    swap = tmp_path / "a/.kept.swp"
    swap.write_text("1\n")
    os.replace(swap, kept)
    dropped.write_text("1\n")
    state = watcher.watch([str(kept), str(added)])
    assert (state.paths, state.directories) == (2, 1)
    assert changes(watcher) == {str(kept)}
    added.write_text("1\n")
    dropped.write_text("2\n")
    assert changes(watcher) == {str(added)}
    dropped.write_text("3\n")  # b/ dropped (its watch removed, IN_IGNORED queued) and added back at once
    watcher.watch([str(kept), str(added)])
    watcher.watch([str(kept), str(added), str(dropped)])
    assert changes(watcher) == set()
    dropped.write_text("4\n")
    assert changes(watcher) == {str(dropped)}


# -- trees: every directory below a managed tree's top is watched (docs/watch.md section 3) --------------

def make_tree(top: Path) -> Path:
    """top/a.conf, top/sub/b.conf, top/sub/deeper/c.conf: the file 3 levels deep is returned."""
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "a.conf").write_text("a\n")
    (top / "sub" / "b.conf").write_text("b\n")
    deep = top / "sub" / "deeper" / "c.conf"
    deep.write_text("c\n")
    return deep


def test_a_file_edited_three_levels_deep_in_a_tree_is_seen(tmp_path: Path, watcher: Watcher) -> None:
    top = tmp_path / "conf.d"
    deep = make_tree(top)
    (tmp_path / "outside.conf").write_text("x")
    state = watcher.watch([str(top)], [str(top)])
    assert (state.paths, state.directories, state.trees, state.unwatched) == (1, 4, 1, ())
    with deep.open("a") as f:
        f.write("by hand\n")
    assert changes(watcher) == {str(deep)}
    (tmp_path / "outside.conf").write_text("y")  # beside the tree: nobody's
    assert changes(watcher) == set()
    tree_roles = {"app": RolePaths("app", frozenset({str(top)}), (), frozenset({str(top)}))}
    assert roles_of({str(deep)}, tree_roles) == {"app"}
    # A tree no longer managed drops its watches (a plain path keeps its one).
    state = watcher.watch([str(top)])
    assert (state.directories, state.trees) == (1, 0)
    deep.write_text("unwatched now\n")
    assert changes(watcher) == set()


def test_a_subdirectory_created_after_arming_is_watched(tmp_path: Path, watcher: Watcher) -> None:
    top = tmp_path / "conf.d"
    make_tree(top)
    watcher.watch([str(top)], [str(top)])
    new = top / "sub" / "new"
    new.mkdir()
    assert changes(watcher) == {str(new)}
    assert watcher.state().directories == 5
    (new / "x.conf").write_text("x\n")
    assert changes(watcher) == {str(new / "x.conf")}
    # mkdir -p of several levels before the watcher reads: the walk finds them all
    (top / "p" / "q" / "r").mkdir(parents=True)
    changes(watcher)
    (top / "p" / "q" / "r" / "y.conf").write_text("y\n")
    assert changes(watcher) == {str(top / "p/q/r/y.conf")}


def test_a_subdirectory_removed_and_recreated_is_watched_again(tmp_path: Path, watcher: Watcher) -> None:
    top = tmp_path / "conf.d"
    make_tree(top)
    watcher.watch([str(top)], [str(top)])
    shutil.rmtree(top / "sub")
    gone = changes(watcher)
    assert {str(top / "sub"), str(top / "sub/deeper/c.conf")} <= gone
    assert watcher.state().directories == 2  # the top (watched as a tree and from its parent), no more
    (top / "sub" / "deeper").mkdir(parents=True)
    assert str(top / "sub") in changes(watcher)
    (top / "sub" / "deeper" / "c.conf").write_text("again\n")
    assert changes(watcher) == {str(top / "sub/deeper/c.conf")}
    assert watcher.state().directories == 4


def test_a_directory_moved_within_the_tree_and_the_top_recreated_are_watched(
        tmp_path: Path, watcher: Watcher) -> None:
    top = tmp_path / "conf.d"
    make_tree(top)
    watcher.watch([str(top)], [str(top)])
    os.rename(top / "sub", top / "moved")
    changes(watcher)
    (top / "moved" / "deeper" / "c.conf").write_text("moved\n")
    assert changes(watcher) == {str(top / "moved/deeper/c.conf")}
    staged = tmp_path / "staged"  # a directory moved in from outside, with a managed file of its own
    (staged / "inner").mkdir(parents=True)
    (staged / "inner" / "s.conf").write_text("s\n")
    watcher.watch([str(top), str(staged / "inner/s.conf")], [str(top)])
    os.rename(staged, top / "staged")
    changes(watcher)
    (top / "staged" / "inner" / "s.conf").write_text("moved in\n")
    assert str(top / "staged/inner/s.conf") in changes(watcher)
    watcher.watch([str(top)], [str(top)])
    os.rename(top, tmp_path / "conf.d.old")  # away: not followed
    assert str(top) in changes(watcher)
    (tmp_path / "conf.d.old" / "a.conf").write_text("old\n")
    assert changes(watcher) == set()
    make_tree(tmp_path / "conf.d.new")
    os.rename(tmp_path / "conf.d.new", top)
    assert str(top) in changes(watcher)
    (top / "sub" / "deeper" / "c.conf").write_text("new tree\n")
    assert changes(watcher) == {str(top / "sub/deeper/c.conf")}
    assert watcher.state().directories == 4


def test_an_editor_style_replace_inside_a_tree_is_seen(tmp_path: Path, watcher: Watcher) -> None:
    top = tmp_path / "conf.d"
    deep = make_tree(top)
    watcher.watch([str(top)], [str(top)])
    tmp = deep.with_name(".c.conf.swp")
    tmp.write_text("edited\n")
    os.replace(tmp, deep)
    assert str(deep) in changes(watcher)
    deep.write_text("again\n")  # the new inode is seen too
    assert changes(watcher) == {str(deep)}


def test_a_tree_past_the_watch_limit_or_the_walk_bound_falls_back_and_says_so(tmp_path: Path) -> None:
    top = tmp_path / "conf.d"
    deep = make_tree(top)
    single = tmp_path / "other" / "app.conf"
    single.parent.mkdir()
    with Watcher(max_watches=3) as w:  # the parents of the two paths, then the tree needs 4 more
        state = w.watch([str(top), str(single)], [str(top)])
        assert (state.paths, state.directories, state.trees) == (2, 2, 0)  # its partial watches dropped
        assert state.unwatched == (str(top),)
        assert state.reason == "the watcher's cap of 3 directory watches was reached"
        deep.write_text("not seen below the top\n")
        single.write_text("the single path still is\n")
        assert changes(w) == {str(single)}
        shutil.rmtree(top / "sub")
        state = w.watch([str(top), str(single)], [str(top)])  # tried again: it fits now
        assert (state.directories, state.trees, state.unwatched, state.reason) == (3, 1, (), None)
    with Watcher(tree_max_entries=4) as w:  # 5 entries: a.conf, sub, b.conf, deeper, c.conf
        make_tree(tmp_path / "big")
        state = w.watch([str(tmp_path / "big")], [str(tmp_path / "big")])
        assert (state.directories, state.trees, state.unwatched) == (1, 0, (str(tmp_path / "big"),))
        assert state.reason == f"the tree {tmp_path / 'big'} has more than 4 entries (the walk's bound)"
        (tmp_path / "big" / "a.conf").write_text("not seen\n")
        assert changes(w) == set()


def test_a_tree_that_grows_past_the_limit_after_arming_falls_back(tmp_path: Path) -> None:
    top = tmp_path / "conf.d"
    make_tree(top)
    with Watcher(max_watches=5) as w:
        assert w.watch([str(top)], [str(top)]).directories == 4
        (top / "n1").mkdir()
        (top / "n2").mkdir()
        changes(w)
        state = w.state()
        assert (state.directories, state.trees, state.unwatched) == (1, 0, (str(top),))
        assert state.reason == "the watcher's cap of 5 directory watches was reached"


def test_nested_trees_and_a_path_in_a_tree_share_watches_and_drop_only_their_own(
        tmp_path: Path, watcher: Watcher) -> None:
    outer = tmp_path / "app"
    inner = outer / "conf.d"
    deep = make_tree(inner)
    single = inner / "sub" / "b.conf"  # a template's file inside a copied tree
    state = watcher.watch([str(outer), str(inner), str(single)], [str(outer), str(inner)])
    assert (state.paths, state.directories, state.trees) == (3, 5, 2)  # tmp_path, app, conf.d, sub, deeper
    state = watcher.watch([str(outer), str(single)], [str(outer)])  # the inner tree's role is gone
    assert (state.directories, state.trees) == (5, 1)
    state = watcher.watch([str(single)])  # only the single file is left: its parent's watch stays
    assert (state.paths, state.directories, state.trees) == (1, 1, 0)
    deep.write_text("not watched\n")
    single.write_text("watched\n")
    assert changes(watcher) == {str(single)}


def test_a_queue_overflow_counts_every_tree_as_changed_and_walks_it_again(tmp_path: Path, watcher: Watcher) -> None:
    queued = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    top = tmp_path / "conf.d"
    deep = make_tree(top)
    watcher.watch([str(top)], [str(top)])
    fd = os.open(top / "sub" / "busy.conf", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for n in range(queued // 2 + 100):  # MODIFY then ATTRIB each round (never merged), unread
            os.write(fd, b"x")
            os.fchmod(fd, 0o600 if n % 2 else 0o644)
    finally:
        os.close(fd)
    assert str(top) in changes(watcher)  # events were lost: the whole tree may have changed
    assert watcher.state().directories == 4
    deep.write_text("after the overflow\n")
    assert changes(watcher) == {str(deep)}
