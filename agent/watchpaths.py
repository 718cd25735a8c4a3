"""Pure: a check run's raw ansible-runner events -> the paths each role manages, for the watcher.

The rules (which module names which path, what is blind) are docs/watch.md section 2. A path comes from
a task's result (`dest`, else `path`), else from the same key of its arguments (`invocation.module_args`:
a template or copy that would create a file names its dest only there in check mode); package and service
modules name the package database and the systemd unit directories instead. A task of a path module whose
path cannot be known (a no_log result, a result ansible-runner blanked over its size limit, a relative
path) is *blind*: its role is still watched for what is known, and the scheduled check finds the rest.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
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
_FINAL = {"runner_on_ok", "runner_on_failed"}
_ITEM = {"runner_item_on_ok", "runner_item_on_failed"}


@dataclass(frozen=True)
class RolePaths:
    """What one role manages: absolute, normalised paths, and the tasks whose paths are not known."""

    role: str
    paths: frozenset[str]
    blind: tuple[str, ...] = ()  # task names (with their loop item) whose path could not be read


def _normal(path: str) -> str | None:
    """An absolute path without `.`, `..`, `//` or a trailing `/`; None for a relative one."""
    if not path.startswith("/"):
        return None
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/")  # normpath keeps a leading "//" (POSIX leaves it implementation-defined)


def result_paths(module: str, res: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The paths one task result (or one loop item's) manages: () when its module manages none, None
    when it manages one that cannot be read from the result (blind). `module` is the short name
    (agent.events.short_module)."""
    if module in STATE_FILES:
        return STATE_FILES[module]
    if module not in PATH_MODULES:
        return ()
    if "censored" in res:
        return None
    found = target(res)
    normal = _normal(found) if found else None
    return (normal,) if normal else None


@dataclass
class _Table:
    paths: dict[str, set[str]]
    blind: dict[str, list[str]]

    def add(self, role: str, task: str, found: tuple[str, ...] | None) -> None:
        self.paths.setdefault(role, set())
        if found is None:
            self.blind.setdefault(role, []).append(task)
        else:
            self.paths[role].update(found)


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
    table = _Table({}, {})
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
            table.add(role, task, result_paths(module, res))
        elif uuid in looped:
            looped.discard(uuid)  # its items were read; the final result repeats them
        elif isinstance(res.get("results"), list):
            for item in res["results"]:
                if isinstance(item, Mapping) and not item.get("skipped"):
                    table.add(role, task, result_paths(module, item))
        else:
            table.add(role, task, result_paths(module, res))
    return {role: RolePaths(role, frozenset(paths), tuple(table.blind.get(role, ())))
            for role, paths in table.paths.items()}


def roles_of(changed: Iterable[str], table: Mapping[str, RolePaths]) -> frozenset[str]:
    """The roles that manage any of the `changed` paths: the roles a watch check runs."""
    wanted = {p for p in (_normal(c) for c in changed) if p}
    return frozenset(role for role, managed in table.items() if managed.paths & wanted)


# -- the hand-off from the child's check to the daemon (state_dir/watch.json, docs/watch.md 3) --------

FORMAT_VERSION = 1


def to_json(table: Mapping[str, RolePaths]) -> dict[str, Any]:
    """{role: RolePaths} -> a JSON-ready dict (sorted, so the same set writes the same bytes)."""
    return {"version": FORMAT_VERSION,
            "roles": {role: {"paths": sorted(r.paths), "blind": list(r.blind)}
                      for role, r in sorted(table.items())}}


def from_json(data: Any, source: str = "watch set") -> dict[str, RolePaths]:
    """The inverse of to_json; AgentError naming `source` and what is wrong for anything else (a file
    from another version, a hand-edited one, a truncated one that still parsed)."""
    if not isinstance(data, Mapping) or data.get("version") != FORMAT_VERSION:
        raise AgentError(f"{source}: not a version {FORMAT_VERSION} watch set")
    roles = data.get("roles")
    if not isinstance(roles, Mapping):
        raise AgentError(f"{source}: 'roles' must be a mapping of role names")
    found: dict[str, RolePaths] = {}
    for role, entry in roles.items():
        paths = entry.get("paths") if isinstance(entry, Mapping) else None
        blind = entry.get("blind", []) if isinstance(entry, Mapping) else None
        if not isinstance(paths, list) or not all(isinstance(p, str) and _normal(p) == p for p in paths):
            raise AgentError(f"{source}: role {role!r}: 'paths' must be a list of absolute, normalised paths")
        if not isinstance(blind, list) or not all(isinstance(t, str) for t in blind):
            raise AgentError(f"{source}: role {role!r}: 'blind' must be a list of task names")
        found[str(role)] = RolePaths(str(role), frozenset(paths), tuple(blind))
    return found
