"""Pure: a check run's raw ansible-runner events -> the paths each role manages, for the watcher.

The rules (which module names which path, what is blind) are docs/watch.md section 2. A path comes from
a task's result (`dest`, else `path`), else from the same key of its arguments (`invocation.module_args`:
a template or copy that would create a file names its dest only there in check mode); package and service
modules name the package database and the systemd unit directories instead. A task of a path module whose
path cannot be known (a no_log result, a result ansible-runner blanked over its size limit, a relative
path) is *blind*: its role is still watched for what is known, and the scheduled check finds the rest.
A task that manages a whole tree (`copy` of a directory, `file state=directory recurse=yes`, `unarchive`)
names its top directory as a *tree*: the watcher then watches every directory below it too.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError
from agent.events import short_module
from agent.result_text import target

# Modules whose result or arguments name the one path they manage (dest or path).
PATH_MODULES = frozenset({
    "file", "copy", "template", "lineinfile", "blockinfile", "replace", "ini_file",
    "community.general.ini_file", "assemble", "get_url", "unarchive", "xml", "community.general.xml",
})
DPKG_STATUS = "/var/lib/dpkg/status"
RPMDB = "/var/lib/rpm/rpmdb.sqlite"
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system")
ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")
# Modules that manage no path of their own but state kept in well-known files.
STATE_FILES: Mapping[str, tuple[str, ...]] = {
    "apt": (DPKG_STATUS,),
    "dnf": (RPMDB,), "dnf5": (RPMDB,), "yum": (RPMDB,),
    "package": (DPKG_STATUS, RPMDB),  # its result does not say which manager it chose
    "service": UNIT_DIRS, "systemd": UNIT_DIRS, "systemd_service": UNIT_DIRS,
    "user": ACCOUNT_FILES, "group": ACCOUNT_FILES,
}
# Modules that only read, run or steer the play: they manage no path and no state of their own. Any
# module not named in these tables (cron, mount, sysctl, authorized_key, apt_repository, hostname, a
# collection's module) changes state that no path here names: its tasks are blind, said, not ignored.
NO_PATH_MODULES = frozenset({
    "command", "shell", "raw", "script", "expect", "debug", "set_fact", "set_stats", "assert", "fail",
    "meta", "pause", "ping", "setup", "gather_facts", "stat", "slurp", "fetch", "find", "uri", "wait_for",
    "wait_for_connection", "include_tasks", "import_tasks", "include_role", "import_role", "include_vars",
    "add_host", "group_by", "async_status", "getent", "package_facts", "service_facts",
    "validate_argument_spec", "tempfile",
})
_FINAL = {"runner_on_ok", "runner_on_failed"}
_ITEM = {"runner_item_on_ok", "runner_item_on_failed"}


@dataclass(frozen=True)
class RolePaths:
    """What one role manages: absolute, normalised paths, and the tasks whose paths are not known."""

    role: str
    paths: frozenset[str]
    blind: tuple[str, ...] = ()  # task names (with their loop item) whose path could not be read
    trees: frozenset[str] = frozenset()  # paths (also in `paths`) whose whole tree below is managed


class PathSet:
    """A compact, immutable set of absolute, normalised paths, for the daemon's long-lived tables: per
    directory one str of its names, NUL-separated (no path holds a NUL). 10,000 paths in 100 directories
    are 100 strs, not 10,000 (the daemon's idle memory, bench/watch.py). Supports `in`, iteration (paths
    made on the fly), `len` and `==`. `trees`: paths whose whole tree is managed: `in` is true for any
    path below one of them too (iteration and `len` give the paths only)."""

    __slots__ = ("_dirs", "_len", "trees")

    def __init__(self, paths: Iterable[str] = (), trees: Iterable[str] = ()) -> None:
        self.trees = frozenset(trees)
        grouped: dict[str, set[str]] = {}
        for path in paths:
            directory, name = posixpath.split(path)
            grouped.setdefault(directory, set()).add(name)
        self._dirs = {d: "\0" + "\0".join(sorted(grouped[d])) + "\0" for d in sorted(grouped)}
        self._len = sum(len(names) for names in grouped.values())

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        directory, name = posixpath.split(path)
        names = self._dirs.get(directory)
        return (names is not None and f"\0{name}\0" in names) or bool(self.trees and under(path, self.trees))

    def __iter__(self) -> Iterator[str]:
        for directory, names in self._dirs.items():
            for name in names[1:-1].split("\0"):
                yield posixpath.join(directory, name)

    def __len__(self) -> int:
        return self._len

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PathSet) and self._dirs == other._dirs and self.trees == other.trees

    def __hash__(self) -> int:
        return hash((frozenset(self._dirs.items()), self.trees))

    def __repr__(self) -> str:
        return f"PathSet({sorted(self)!r})"


def under(path: str, trees: AbstractSet[str]) -> str | None:
    """The tree of `trees` that `path` is in (the path itself or one of its ancestors), None when none."""
    while True:
        if path in trees:
            return path
        parent = posixpath.dirname(path)
        if parent == path:
            return None
        path = parent


def _normal(path: str) -> str | None:
    """An absolute path without `.`, `..`, `//` or a trailing `/`; None for a relative one."""
    if not path.startswith("/"):
        return None
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/")  # normpath keeps a leading "//" (POSIX leaves it implementation-defined)


def result_paths(module: str, res: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The paths one task result (or one loop item's) manages: () when its module manages none
    (NO_PATH_MODULES), None when what it manages cannot be read from the result or is no path the table
    knows (blind). `module` is the short name (agent.events.short_module)."""
    if module in STATE_FILES:
        return STATE_FILES[module]
    if module in NO_PATH_MODULES:
        return ()
    if module not in PATH_MODULES:
        return None  # state no path names (a cron entry, a mount, a sysctl): blind
    if "censored" in res:
        return None
    found = target(res)
    normal = _normal(found) if found else None
    if not normal or not isinstance(found, str):
        return None
    return result_trees(module, res) or _into_directory(module, res, found, normal) or (normal,)


def _args(res: Mapping[str, Any]) -> Mapping[str, Any]:
    invocation = res.get("invocation")
    args = invocation.get("module_args") if isinstance(invocation, Mapping) else None
    return args if isinstance(args, Mapping) else {}


def result_trees(module: str, res: Mapping[str, Any]) -> tuple[str, ...]:
    """The trees one task result manages as a whole (their top directories; () for none), read from the
    result shapes of ansible-core 2.x (docs/watch.md section 2, recorded in tests/test_watchpaths.py):

    - `file` with `recurse: true` and `state: directory` (its arguments say so in check mode too): `path`;
    - `copy` of a directory: Ansible's copy action walks the source and returns one summary for the
      directory (the result's `src` is the controller's path, the invocation names `src`/`dest` beside its
      module_args, and there is no `checksum`, which a one-file result has); a `src` ending in `/` copies
      the contents into `dest`, one without copies the directory itself into `dest/basename(src)`;
    - `copy` with `remote_src: true` of a directory: the module's result has `state: directory` (a file's
      has `state: file`) and its `dest` is the tree already (`dest/basename(src)` for a `src` without
      `/`); in check mode before the directory exists only the arguments say so, by a `src` ending in
      `/` (then the tree is their `dest`);
    - `unarchive`: `dest` (the archive's files land anywhere below it).
    """
    if module not in ("file", "copy", "unarchive") or "censored" in res:
        return ()
    args = _args(res)
    if module == "file":
        path = res.get("path", args.get("path"))
        tree = args.get("recurse") is True and args.get("state") == "directory" and isinstance(path, str)
        normal = _normal(path) if tree and isinstance(path, str) else None
        return (normal,) if normal else ()
    dest = res.get("dest", args.get("dest") if module == "copy" and args.get("remote_src") is True else None)
    normal = _normal(dest) if isinstance(dest, str) else None
    if normal is None:
        return ()
    if module == "unarchive":
        return (normal,)
    invocation = res.get("invocation")
    src = invocation.get("src") if isinstance(invocation, Mapping) else None
    if args.get("remote_src") is True:
        src = args.get("src")
        tree = res.get("state") == "directory" or (isinstance(src, str) and src.endswith("/"))
        return (normal,) if tree else ()
    if not isinstance(src, str) or not src or not isinstance(res.get("src"), str) or "checksum" in res:
        return ()
    if src.endswith("/"):
        return (normal,)
    name = posixpath.basename(posixpath.normpath(src))
    return (posixpath.join(normal, name),) if name not in ("", ".", "..") else ()


def _into_directory(module: str, res: Mapping[str, Any], found: str, normal: str) -> tuple[str, ...]:
    """A copy or template whose dest ends in `/` writes dest/basename(src) (Ansible's copy and template
    actions). A result that names the file says so itself; one that does not (check mode, the file would
    be created) names only its arguments' dest, and then the file is that dest's child. () when not
    such a task. (A dest without the `/` that is an existing directory cannot be told from the arguments:
    its file is named by the next check's result, once it exists.)"""
    if module not in ("copy", "template") or any(isinstance(res.get(k), str) for k in ("dest", "path")):
        return ()
    src = _args(res).get("src")
    if not found.endswith("/") or not isinstance(src, str) or not src or src.endswith("/"):
        return ()
    return (posixpath.join(normal, posixpath.basename(src)),)


@dataclass
class _Table:
    paths: dict[str, set[str]]
    blind: dict[str, list[str]]
    trees: dict[str, set[str]]

    def add(self, role: str, task: str, module: str, res: Mapping[str, Any]) -> None:
        found = result_paths(module, res)
        self.paths.setdefault(role, set())
        if found is None:
            self.blind.setdefault(role, []).append(task)
        else:
            self.paths[role].update(found)
            self.trees.setdefault(role, set()).update(result_trees(module, res))


def _role(data: Mapping[str, Any]) -> str:
    playbook = data.get("playbook")
    return posixpath.splitext(posixpath.basename(playbook))[0] if isinstance(playbook, str) else ""


def _res(data: Mapping[str, Any]) -> Mapping[str, Any]:
    res = data.get("res")
    return res if isinstance(res, Mapping) else {}


def managed_paths(events: Iterable[Mapping[str, Any]], *, host: str | None = None,
                  exclude_roles: Iterable[str] = ()) -> dict[str, RolePaths]:
    """A check run's events, in order -> {role: RolePaths} for every role that ran a task for `host`
    (None: any host), minus `exclude_roles` (the per-role opt-out). Skipped and unreachable tasks manage
    nothing in this run; a looped task is read item by item (from its runner_item_on_* events, else from
    its final result's `results`)."""
    table = _Table({}, {}, {})
    excluded = set(exclude_roles)
    looped: set[str] = set()  # task executions whose items were read one by one
    for event in events:
        name = str(event.get("event"))
        data = event.get("event_data")
        if name not in _FINAL | _ITEM or not isinstance(data, Mapping):
            continue
        role = _role(data)
        if role in excluded or (host is not None and data.get("host") not in (None, host)):
            continue
        module = short_module(str(data.get("resolved_action") or data.get("task_action") or ""))
        task, res, uuid = str(data.get("task") or module), _res(data), str(data.get("task_uuid") or "")
        if name in _ITEM:
            looped.add(uuid)
            table.add(role, task, module, res)
        elif uuid in looped:
            looped.discard(uuid)  # its items were read; the final result repeats them
        elif isinstance(res.get("results"), list):
            for item in res["results"]:
                if isinstance(item, Mapping) and not item.get("skipped"):
                    table.add(role, task, module, item)
        else:
            table.add(role, task, module, res)
    return {role: RolePaths(role, frozenset(paths), tuple(table.blind.get(role, ())),
                            frozenset(table.trees.get(role, ())))
            for role, paths in table.paths.items()}


def roles_of(changed: Iterable[str], table: Mapping[str, RolePaths | PathSet]) -> frozenset[str]:
    """The roles that manage any of the `changed` paths: the roles a watch check runs. `table`: {role:
    RolePaths} or the daemon's compact {role: PathSet}."""
    wanted = {p for p in (_normal(c) for c in changed) if p}
    found = {role: PathSet(m.paths, m.trees) if isinstance(m, RolePaths) else m for role, m in table.items()}
    return frozenset(role for role, paths in found.items() if any(p in paths for p in wanted))


# -- the hand-off from the child's check to the daemon (state_dir/watch.json, docs/watch.md 3) --------

FORMAT_VERSION = 1


def to_json(table: Mapping[str, RolePaths]) -> dict[str, Any]:
    """{role: RolePaths} -> a JSON-ready dict (sorted, so the same set writes the same bytes; `trees` only
    for a role that has some, so an older daemon reads the rest as before)."""
    return {"version": FORMAT_VERSION,
            "roles": {role: {"paths": sorted(r.paths), "blind": list(r.blind)}
                      | ({"trees": sorted(r.trees)} if r.trees else {})
                      for role, r in sorted(table.items())}}


def from_json(data: Any, source: str = "watch set") -> dict[str, RolePaths]:
    """The inverse of to_json; AgentError naming `source` and what is wrong for anything else (a file
    from another version, a hand-edited one, a truncated one that still parsed)."""
    version = data.get("version") if isinstance(data, Mapping) else None
    if type(version) is not int or version != FORMAT_VERSION:  # (True == 1 in Python)
        raise AgentError(f"{source}: not a version {FORMAT_VERSION} watch set")
    roles = data.get("roles")
    if not isinstance(roles, Mapping):
        raise AgentError(f"{source}: 'roles' must be a mapping of role names")
    found: dict[str, RolePaths] = {}
    for role, entry in roles.items():
        paths = entry.get("paths") if isinstance(entry, Mapping) else None
        blind = entry.get("blind", []) if isinstance(entry, Mapping) else None
        if not isinstance(paths, list) or not all(isinstance(p, str) and "\0" not in p and _normal(p) == p
                                                  for p in paths):
            raise AgentError(f"{source}: role {role!r}: 'paths' must be a list of absolute, normalised paths")
        if not isinstance(blind, list) or not all(isinstance(t, str) for t in blind):
            raise AgentError(f"{source}: role {role!r}: 'blind' must be a list of task names")
        trees = entry.get("trees", [])
        if not isinstance(trees, list) or not all(isinstance(t, str) and t in paths for t in trees):
            raise AgentError(f"{source}: role {role!r}: 'trees' must be a list of its paths")
        found[str(role)] = RolePaths(str(role), frozenset(paths), tuple(blind), frozenset(trees))
    return found
