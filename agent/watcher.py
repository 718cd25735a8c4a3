"""The inotify watch table: which managed paths changed, over `inotify_simple` (docs/watch.md, 1 and 3).

One inotify watch per directory, never per file: each managed path is watched through its parent
directory, and an event counts when it names the path's last component. So a rename-over (an editor's
`mv tmp app.conf`, dpkg's `status-new`) is one IN_MOVED_TO in the parent, and a child's mode or owner
change is the parent's IN_ATTRIB. A path whose parent does not exist is watched from its nearest existing
ancestor, by the next component on its way; when that component appears the watch moves down, and when a
watched directory goes (deleted or moved away) it moves up, and every managed path under it counts as
changed. A queue overflow (IN_Q_OVERFLOW) counts every managed path as changed.

When `inotify_add_watch` says ENOSPC (fs.inotify.max_user_watches reached; or `max_watches`, a cap for
tests, is reached), the paths that needed that watch are *unwatched*: `state()` names them and the
reason, and the caller checks them on the schedule only. They are tried again at the next `watch()`.

A *tree* (a directory whose whole content is managed: a `copy` of a directory, `file recurse=yes`,
`unarchive`) is watched below its top too: one watch per directory of the tree, found by a bounded walk
(at most `tree_max_entries` entries, TREE_MAX_ENTRIES by default), and an event in any of them counts as a
change of the path it names. inotify has no recursion, so a directory created in the tree (IN_CREATE or
IN_MOVED_TO with IN_ISDIR) is walked and watched when its event is read, a deleted one drops its watch,
and a directory moved within, into or out of the tree (or the tree's top recreated) has the tree walked
again. A tree whose walk passes the bound, or that meets the watch limit, is not watched below its top
(its top stays watched as a path): `state()` names it as unwatched, with the reason, and it is tried
again at the next `watch()`. Trees are armed after the paths, so single files win the watches first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from inotify_simple import INotify, flags

from agent.errors import AgentError

MASK = (flags.CLOSE_WRITE | flags.MODIFY | flags.ATTRIB | flags.CREATE | flags.DELETE | flags.MOVED_FROM
        | flags.MOVED_TO | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR)
_GONE = flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED
MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")
PLACE_TRIES = 5
TREE_MAX_ENTRIES = 20_000  # entries (files, directories, links) one walk of one tree may read
_TREE_MOVES = flags.MOVED_FROM | flags.MOVED_TO


@dataclass(frozen=True)
class WatchState:
    """How much of the managed set is watched (for status, the report and metrics)."""

    paths: int  # managed paths watched (each through one directory watch)
    directories: int  # inotify watches in use
    unwatched: tuple[str, ...] = ()  # managed paths that only the scheduled check looks at
    reason: str | None = None  # why some are unwatched
    trees: int = 0  # trees watched below their top (their directories count in `directories`)


@dataclass
class _Dir:
    path: str
    # component -> what is watched through it: None for the one managed path `path/component` (the
    # common case: no str of the full path is kept, so 10,000 paths stay small, bench/watch.py), else the
    # managed path, or a set of them (paths below a missing directory share its name; a path named
    # through an alias of this directory)
    names: dict[str, str | set[str] | None] = field(default_factory=dict)
    # other paths of the same directory (a symlink such as /var/run -> /run, a bind mount): inotify gives
    # one inode one wd, whichever path named it
    aliases: list[str] = field(default_factory=list)
    # the trees (their top paths) this directory is watched for: any event in it counts
    trees: set[str] = field(default_factory=set)

    def _held(self, name: str) -> set[str]:
        if name not in self.names:
            return set()
        known = self.names[name]
        if known is None:
            return {posixpath.join(self.path, name)}
        return {known} if isinstance(known, str) else set(known)

    def _keep(self, name: str, held: set[str]) -> None:
        if not held:
            self.names.pop(name, None)
        elif held == {posixpath.join(self.path, name)}:
            self.names[name] = None
        else:
            self.names[name] = next(iter(held)) if len(held) == 1 else held

    def add(self, name: str, path: str) -> None:
        self._keep(name, self._held(name) | {path})

    def through(self, name: str) -> set[str]:
        return self._held(name)

    def every(self) -> set[str]:
        return {p for name in self.names for p in self._held(name)}

    def count(self) -> int:
        return sum(len(known) if isinstance(known, set) else 1 for known in self.names.values())

    def remove(self, path: str) -> bool:
        """Forget `path` (watched by its component just below this directory); False when not here."""
        under = [d for d in (self.path, *self.aliases) if path.startswith(d.rstrip("/") + "/")]
        name = path[len(under[0]):].lstrip("/").split("/", 1)[0] if under else ""
        for candidate in [name] if name in self.names else list(self.names):
            held = self._held(candidate)
            if path in held:
                self._keep(candidate, held - {path})
                return True
        return False


def _limit_reason(cap: int | None) -> str:
    if cap is not None:
        return f"the watcher's cap of {cap} directory watches was reached"
    try:
        limit = MAX_USER_WATCHES.read_text().strip()
    except OSError:
        limit = "?"
    return f"fs.inotify.max_user_watches ({limit}) was reached"


class Watcher:
    """Watch a set of absolute, normalised paths (agent.watchpaths); `read()` says which changed."""

    def __init__(self, *, max_watches: int | None = None, tree_max_entries: int = TREE_MAX_ENTRIES) -> None:
        try:
            self._inotify = INotify()
        except OSError as exc:  # EMFILE: fs.inotify.max_user_instances
            raise AgentError(f"cannot start watching: inotify_init failed: {exc.strerror} "
                             "(fs.inotify.max_user_instances?)") from exc
        self._cap = max_watches
        self._dirs: dict[int, _Dir] = {}  # wd -> directory
        self._wd_of: dict[str, int] = {}  # directory -> wd
        # managed path -> wd of the directory watching it, for paths that are not the plain child of
        # their watched parent (watched from an ancestor, or through an alias); the plain ones are found
        # from the directory table (no str per path is kept: RSS, bench/watch.py)
        self._away: dict[str, int] = {}
        self._unwatched: set[str] = set()
        self._reason: str | None = None
        self._tree_max = tree_max_entries
        self._trees: dict[str, _Tree] = {}  # tree top -> its watched directories
        self._trees_off: dict[str, str] = {}  # tree top -> why it is not watched below its top

    def close(self) -> None:
        self._inotify.close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return int(self._inotify.fileno())

    # -- the table -------------------------------------------------------------------------------

    def watch(self, paths: Iterable[str], trees: Iterable[str] = ()) -> WatchState:
        """Watch exactly `paths` from now on (a new check's managed set): add what is new, drop what is
        gone, and try the unwatched ones again; and every directory below each of `trees` (the tops of
        managed trees; see the module's docstring). Paths must be absolute. A set that makes its paths on the
        fly (agent.watchpaths.PathSet, as the daemon passes) is placed one path at a time, so no second
        table of 10,000 strs is alive while the watch table grows (it would pin the allocator's memory:
        idle RSS, bench/watch.py)."""
        keep = isinstance(paths, Collection) and not isinstance(paths, list | tuple)
        wanted = paths if keep else set(paths)
        for path in wanted:
            if not path.startswith("/") or posixpath.normpath(path) != path:
                raise AgentError(f"watch: {path!r} is not an absolute, normalised path")
        for path in [p for p in self._managed() if p not in wanted]:
            self._unplace(path)
            self._unwatched.discard(path)
        self._reason = None if not self._unwatched else self._reason
        for path in wanted if keep else sorted(wanted):  # (a PathSet iterates by sorted directory)
            if path != "/" and self._placed_at(path) is None:
                self._unwatched.discard(path)
                self._place(path)
        self._reason = None if not self._unwatched else self._reason
        self._watch_trees(trees)
        return self.state()

    def _managed(self) -> set[str]:
        """Every managed path: each is either watched (in the directory table) or unwatched."""
        return {p for entry in self._dirs.values() for p in entry.every()} | self._unwatched

    def _placed_at(self, path: str) -> int | None:
        """The wd of the directory watching `path`, None when it is not watched."""
        wd = self._away.get(path)
        if wd is not None:
            return wd
        directory, name = posixpath.split(path)
        wd = self._wd_of.get(directory)
        if wd is not None and self._dirs[wd].path == directory and path in self._dirs[wd].through(name):
            return wd
        return None

    def state(self) -> WatchState:
        reasons = dict.fromkeys([self._reason] if self._reason else [])
        reasons.update(dict.fromkeys(self._trees_off.values()))
        return WatchState(paths=sum(entry.count() for entry in self._dirs.values()),
                          directories=len(self._dirs),
                          unwatched=tuple(sorted(self._unwatched | set(self._trees_off))),
                          reason="; ".join(reasons) or None, trees=len(self._trees))

    def _add_watch(self, directory: str) -> int | None:
        """The wd watching `directory`; None when it does not exist (or is no directory); raises
        _Limit at the watch limit."""
        known = self._wd_of.get(directory)
        if known is not None:
            return known
        if self._cap is not None and len(self._dirs) >= self._cap:
            raise _Limit(_limit_reason(self._cap))
        try:
            wd = int(self._inotify.add_watch(directory, MASK))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            if exc.errno == errno.ENOSPC:
                raise _Limit(_limit_reason(None)) from exc
            raise _Limit(f"cannot watch {directory}: {exc.strerror}") from exc
        if wd in self._dirs:  # the same directory by another path
            self._dirs[wd].aliases.append(directory)
        else:
            self._dirs[wd] = _Dir(directory)
        self._wd_of[directory] = wd
        return wd

    def _place(self, path: str) -> None:
        """Watch `path` through its parent, or through its nearest existing ancestor. A directory on the
        way that appeared while the ancestor's watch was being added (`mkdir -p` racing us) would send
        that watch no event, so it is looked for once the watch is in place, and the path placed deeper."""
        for attempt in range(1, PLACE_TRIES + 1):
            directory, name = posixpath.split(path)
            while True:
                try:
                    wd = self._add_watch(directory)
                except _Limit as limit:
                    self._unwatched.add(path)
                    self._reason = str(limit)
                    return
                if wd is not None:
                    break
                if directory == "/":  # not even / could be watched: treat it like a limit
                    self._unwatched.add(path)
                    self._reason = "cannot watch /"
                    return
                directory, name = posixpath.split(directory)
            entry = self._dirs[wd]
            entry.add(name, path)
            if path != posixpath.join(entry.path, name):
                self._away[path] = wd
            deeper = posixpath.join(directory, name)
            settled = directory == posixpath.dirname(path) or not Path(deeper).is_dir()
            if settled or attempt == PLACE_TRIES:  # (directories that keep coming and going: stay here)
                return
            self._unplace(path)  # raced: try again from the parent

    def _unplace(self, path: str) -> None:
        wd = self._placed_at(path)
        self._away.pop(path, None)
        if wd is None or wd not in self._dirs:
            return
        entry = self._dirs[wd]
        entry.remove(path)
        if not entry.names and not entry.trees:
            self._drop(wd)
            self._rm_watch(wd)

    def _rm_watch(self, wd: int) -> None:
        with contextlib.suppress(OSError):  # already gone (IN_IGNORED on its way)
            self._inotify.rm_watch(wd)

    def _drop(self, wd: int) -> None:
        entry = self._dirs.pop(wd, None)
        for directory in () if entry is None else (entry.path, *entry.aliases):
            if self._wd_of.get(directory) == wd:
                del self._wd_of[directory]

    def _moved(self, paths: Iterable[str]) -> None:
        for path in list(paths):
            self._unplace(path)
            self._place(path)

    # -- events ----------------------------------------------------------------------------------

    def read(self, timeout_s: float | None) -> set[str]:
        """Wait up to `timeout_s` seconds (None: forever) for events; the managed paths they changed
        (empty on a timeout)."""
        changed: set[str] = set()
        rewalk: set[str] = set()  # trees whose directories moved: walked again once the events are read
        timeout = None if timeout_s is None else max(0, int(timeout_s * 1000))
        for event in self._inotify.read(timeout=timeout):
            if event.mask & flags.Q_OVERFLOW:
                managed = self._managed()
                changed |= managed | set(self._trees)
                rewalk |= set(self._trees)
                self._moved(managed)
                continue
            entry = self._dirs.get(event.wd)
            if entry is None:
                continue  # a watch dropped already (IN_IGNORED after IN_DELETE_SELF)
            if entry.trees:
                changed |= self._tree_event(entry, event.mask, event.name, rewalk)
            if event.mask & _GONE:
                gone = entry.every()
                changed |= gone
                self._drop(event.wd)
                if not event.mask & flags.IGNORED:
                    self._rm_watch(event.wd)  # moved away: the kernel would follow it
                for path in gone:
                    self._away.pop(path, None)
                self._moved(gone)
                continue
            through = entry.through(event.name)
            if not through:
                continue
            changed |= through
            deeper = {p for p in through if self._wd_of.get(posixpath.dirname(p)) != event.wd}
            if deeper and event.mask & (flags.CREATE | flags.MOVED_TO):
                self._moved(deeper)  # a directory on the way appeared: watch closer
        for top in sorted(rewalk | (changed & set(self._trees))):  # (a top recreated: walk it again)
            self._arm_tree(top)
        return changed

    # -- trees -----------------------------------------------------------------------------------

    def _watch_trees(self, trees: Iterable[str]) -> None:
        wanted = set(trees)
        for top in wanted:
            if not top.startswith("/") or posixpath.normpath(top) != top:
                raise AgentError(f"watch: tree {top!r} is not an absolute, normalised path")
        for top in [t for t in [*self._trees, *self._trees_off] if t not in wanted]:
            self._untree(top)
        for top in sorted(wanted):
            if top not in self._trees:
                self._arm_tree(top)

    def _arm_tree(self, top: str) -> None:
        """(Re)walk the tree below `top` and watch each of its directories; past the bound or the watch
        limit, the tree is unwatched below its top, with the reason."""
        self._untree(top)
        tree = self._trees[top] = _Tree()
        failed = self._walk(top, tree, top)
        if failed is not None:
            self._untree(top)
            self._trees_off[top] = failed

    def _walk(self, top: str, tree: _Tree, start: str) -> str | None:
        """Watch `start` and every directory below it for the tree `top`; None, or why it cannot be."""
        stack = [start]
        while stack:
            directory = stack.pop()
            try:
                wd = self._add_watch(directory)
            except _Limit as limit:
                return str(limit)
            if wd is None:
                continue  # gone meanwhile (its parent's event says so)
            self._dirs[wd].trees.add(top)
            tree.dirs.add(directory)
            try:
                with os.scandir(directory) as found:
                    for item in found:
                        tree.entries += 1
                        if tree.entries > self._tree_max:
                            return (f"the tree {top} has more than {self._tree_max} entries (the walk's "
                                    "bound)")
                        if item.is_dir(follow_symlinks=False):
                            stack.append(item.path)
            except OSError:
                continue  # gone or unreadable meanwhile: its watch (or its parent's) sees what follows
        return None

    def _untree(self, top: str) -> None:
        """Stop watching below `top` (the directories that nothing else needs lose their watch)."""
        self._trees_off.pop(top, None)
        tree = self._trees.pop(top, None)
        for directory in () if tree is None else tree.dirs:
            wd = self._wd_of.get(directory)
            entry = None if wd is None else self._dirs.get(wd)
            if wd is None or entry is None:
                continue
            entry.trees.discard(top)
            if not entry.names and not entry.trees:
                self._drop(wd)
                self._rm_watch(wd)

    def _tree_event(self, entry: _Dir, mask: int, name: str, rewalk: set[str]) -> set[str]:
        """An event in a directory of trees: the path it names, and the directories it adds or drops
        (a directory created is walked now; a move is left to a walk of the whole tree)."""
        path = posixpath.join(entry.path, name) if name else entry.path
        # (a directory moved into the tree while another path's watch held it: one wd, both paths)
        paths = {posixpath.join(d, name) if name else d for d in (entry.path, *entry.aliases)}
        for top in list(entry.trees):
            tree = self._trees.get(top)
            if tree is None:
                continue
            if mask & flags.MOVE_SELF or (mask & _TREE_MOVES and mask & flags.ISDIR):
                rewalk.add(top)
            elif mask & (flags.DELETE_SELF | flags.IGNORED):
                tree.dirs.discard(entry.path)
            elif mask & flags.CREATE and mask & flags.ISDIR:
                failed = self._walk(top, tree, path)
                if failed is not None:
                    self._untree(top)
                    self._trees_off[top] = failed
        return paths


@dataclass
class _Tree:
    dirs: set[str] = field(default_factory=set)  # its watched directories
    entries: int = 0  # entries its walks read (against the bound)


class _Limit(Exception):
    """inotify_add_watch refused for a limit (or a permission): the path stays unwatched."""
