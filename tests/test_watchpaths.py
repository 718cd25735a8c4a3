"""agent.watchpaths: the paths each role manages, read from a check run's raw events (docs/watch.md, 2).

The captured runs under tests/data/events are the input (real ansible-runner events); a few synthetic
events cover the modules those runs do not use (packages, services, accounts) and the corner shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.errors import AgentError
from agent.watchpaths import (
    DPKG_STATUS,
    RPMDB,
    UNIT_DIRS,
    PathSet,
    RolePaths,
    from_json,
    managed_paths,
    result_paths,
    result_trees,
    roles_of,
    to_json,
)

EVENTS = Path(__file__).parent / "data" / "events"


def captured(case: str) -> dict[str, RolePaths]:
    meta = json.loads((EVENTS / case / "meta.json").read_text()) if (EVENTS / case / "meta.json").exists() else {}
    return managed_paths(json.loads((EVENTS / case / "events.json").read_text()),
                         host=meta.get("host", "localhost"))


def table(found: dict[str, RolePaths]) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    return {role: (sorted(p.paths), p.blind) for role, p in found.items()}


MIXED = ["/TMP/root", "/TMP/root/etc/app", "/TMP/root/etc/app/app.conf", "/TMP/root/etc/app/env",
         "/TMP/root/srv/a", "/TMP/root/srv/b"]


@pytest.mark.parametrize(("case", "expected"), [
    # file (directory, and looped), copy (dest in result and in args), lineinfile (path only in args);
    # the skipped commands name nothing; the no_log copy is blind, in the check and in the apply alike
    ("check_mixed", {"mixed": (MIXED, ("Secret token",))}),
    ("apply_mixed", {"mixed": (MIXED, ("Secret token",))}),
    # a loop read item by item from its runner_item_on_* events
    ("big_loop_check", {"playbook": ([f"/TMP/root/spool/{n:04}" for n in range(6)], ())}),
    # a failed loop item still names the path its task manages
    ("loop_item_fails_check", {"app": (["/TMP/root/alpha.conf", "/TMP/root/beta.conf",
                                        "/TMP/root/gamma.conf"], ())}),
    # templates that would create their files: the dest is only in the module's arguments
    ("template_new_file_check", {"app": (["/TMP/root/app.conf"], ())}),
    ("include_loop_twins_check", {"web": (["/TMP/root/site-a.conf", "/TMP/root/site-b.conf"], ())}),
    # a slurp reads a file, it does not manage it
    ("block_rescue_check", {"app": (["/TMP/root/app-data", "/TMP/root/app.conf"], ())}),
    # ansible-runner blanked the result (over its event limit): blind, not silently unwatched
    ("blanked_result_check", {"playbook": ([], ("Big config",))}),
    # a file task that failed before it said its path
    ("mitogen_become_check", {"playbook": ([], ("App folder",))}),
    # roles that ran only commands or facts manage no path, but are known to have run
    ("apply_failing", {"failing": ([], ())}),
    ("check_mode_fact_check", {"app": ([], ())}),
    ("tasks_filtered_away_check", {}),
])
def test_managed_paths_of_captured_runs(case: str, expected: dict[str, Any]) -> None:
    assert table(captured(case)) == expected


def event(name: str, action: str, res: dict[str, Any], *, playbook: str = "/repo/playbooks/web.yml",
          task: str = "t", uuid: str = "u1", host: str = "h1") -> dict[str, Any]:
    return {"event": name, "event_data": {"playbook": playbook, "task": task, "task_uuid": uuid,
                                          "resolved_action": action, "host": host, "res": res}}


@pytest.mark.parametrize(("action", "expected"), [
    ("ansible.builtin.apt", (DPKG_STATUS,)),
    ("ansible.legacy.dnf", (RPMDB,)),
    ("ansible.builtin.yum", (RPMDB,)),
    ("ansible.builtin.package", (DPKG_STATUS, RPMDB)),
    ("ansible.builtin.service", UNIT_DIRS),
    ("ansible.builtin.systemd_service", UNIT_DIRS),
    ("ansible.builtin.user", ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")),
])
def test_package_service_and_account_modules_name_their_state_files(action: str,
                                                                    expected: tuple[str, ...]) -> None:
    found = managed_paths([event("runner_on_ok", action, {"changed": True, "name": "nginx"})])
    assert found == {"web": RolePaths("web", frozenset(expected))}


@pytest.mark.parametrize(("res", "expected"), [
    ({"path": "/etc//app/./conf/"}, ("/etc/app/conf",)),
    ({"dest": "/etc/app/../motd"}, ("/etc/motd",)),
    ({"path": "//etc/hosts"}, ("/etc/hosts",)),
    ({"dest": "/a", "path": "/b"}, ("/a",)),  # dest first, as agent.result_text.target reads it
    ({"invocation": {"module_args": {"path": "/etc/x.ini"}}}, ("/etc/x.ini",)),
    ({"path": "relative/file"}, None),  # cannot be watched: blind
    ({}, None),
    ({"censored": "hidden", "path": "/etc/secret"}, None),
])
def test_result_paths_normalises_and_tells_blind_tasks(res: dict[str, Any],
                                                       expected: tuple[str, ...] | None) -> None:
    assert result_paths("ini_file", res) == expected


def _args(**module_args: str) -> dict[str, Any]:
    return {"changed": True, "invocation": {"module_args": module_args}}


@pytest.mark.parametrize(("module", "res", "expected"), [
    # check mode, the file would be created: only the arguments name it (as ansible-core 2.x reports)
    ("copy", _args(src="files/a.conf", dest="/etc/app/"), ("/etc/app/a.conf",)),
    ("template", _args(src="templates/app.conf.j2", dest="/etc/app/"), ("/etc/app/app.conf.j2",)),
    ("copy", _args(src="/srv/a.conf", dest="/etc/app"), ("/etc/app",)),  # a file, or a directory: unknown
    ("copy", _args(content="x", dest="/etc/app.conf"), ("/etc/app.conf",)),
    ("copy", _args(src="files/tree/", dest="/etc/tree/"), ("/etc/tree",)),  # a tree: its root
    # a result that names the file says which it is
    ("copy", {"dest": "/etc/app/a.conf", "invocation": {"module_args": {"src": "a.conf", "dest": "/etc/app/"}}},
     ("/etc/app/a.conf",)),
    ("lineinfile", _args(path="/etc/app/", src="x"), ("/etc/app",)),
])
def test_a_copy_or_template_into_a_directory_watches_the_file_it_writes(
        module: str, res: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert result_paths(module, res) == expected


@pytest.mark.parametrize("module", ["cron", "mount", "ansible.posix.mount", "ansible.posix.sysctl",
                                    "ansible.posix.authorized_key", "apt_repository", "hostname",
                                    "community.docker.docker_container", "known_hosts", "git"])
def test_a_module_that_changes_state_the_table_does_not_know_is_blind_not_ignored(module: str) -> None:
    events = [{"event": "runner_on_ok", "event_data": {
        "playbook": "/TMP/repo/playbooks/base.yml", "host": "web1", "task": "Some state",
        "task_action": module, "task_uuid": "u1", "res": {"changed": True}}}]
    assert managed_paths(events) == {"base": RolePaths("base", frozenset(), ("Some state",))}


def test_modules_that_manage_no_path_name_none() -> None:
    for module in ("command", "shell", "debug", "set_fact", "slurp", "stat", "include_tasks"):
        assert result_paths(module, {"path": "/etc/x"}) == ()


def test_a_loop_without_item_events_is_read_from_its_final_results() -> None:
    res = {"changed": True, "results": [{"dest": "/etc/a"}, {"skipped": True, "dest": "/etc/skipped"},
                                        {"censored": "hidden"}, "not a mapping"]}
    found = managed_paths([event("runner_on_ok", "ansible.builtin.copy", res, task="Configs")])
    assert table(found) == {"web": (["/etc/a"], ("Configs",))}


def test_skipped_and_unreachable_tasks_and_other_hosts_manage_nothing() -> None:
    found = managed_paths([
        event("runner_on_skipped", "ansible.builtin.copy", {"dest": "/etc/skipped"}),
        event("runner_on_unreachable", "ansible.builtin.copy", {"dest": "/etc/unreachable"}),
        event("runner_on_ok", "ansible.builtin.copy", {"dest": "/etc/other-host"}, host="h2"),
        event("runner_on_ok", "ansible.builtin.copy", {"dest": "/etc/mine"}, host="h1"),
    ], host="h1")
    assert table(found) == {"web": (["/etc/mine"], ())}


def test_roles_are_the_playbooks_and_the_per_role_opt_out_drops_one() -> None:
    run = [event("runner_on_ok", "ansible.builtin.copy", {"dest": "/etc/nginx.conf"}),
           event("runner_on_ok", "ansible.builtin.copy", {"dest": "/etc/my.cnf"}, uuid="u2",
                 playbook="/repo/playbooks/db.yml"),
           event("runner_on_ok", "ansible.builtin.file", {"path": "/etc/ssl"}, uuid="u3",
                 playbook="/repo/playbooks/db.yml")]
    assert table(managed_paths(run)) == {"web": (["/etc/nginx.conf"], ()), "db": (["/etc/my.cnf", "/etc/ssl"], ())}
    assert table(managed_paths(run, exclude_roles=["db"])) == {"web": (["/etc/nginx.conf"], ())}


def test_roles_of_changed_paths() -> None:
    found = {"web": RolePaths("web", frozenset({"/etc/nginx.conf", "/etc/ssl"})),
             "db": RolePaths("db", frozenset({"/etc/my.cnf", "/etc/ssl"})),
             "base": RolePaths("base", frozenset({DPKG_STATUS}))}
    assert roles_of(["/etc/nginx.conf"], found) == {"web"}
    assert roles_of(["/etc/ssl/"], found) == {"web", "db"}  # a shared path checks both its roles
    assert roles_of(["/etc/my.cnf", "/var/lib/dpkg/status"], found) == {"db", "base"}
    assert roles_of(["/etc/unmanaged", "relative"], found) == frozenset()


def test_the_hand_off_to_the_daemon_round_trips_through_json() -> None:
    found = captured("check_mixed") | captured("big_loop_check")
    data = json.loads(json.dumps(to_json(found)))
    assert from_json(data) == found
    assert to_json(found) == to_json(from_json(data))  # stable: sorted roles and paths


@pytest.mark.parametrize(("data", "error"), [
    ([], "watch.json: not a version 1 watch set"),
    ({"version": 2, "roles": {}}, "watch.json: not a version 1 watch set"),
    ({"version": 1}, "watch.json: 'roles' must be a mapping of role names"),
    ({"version": 1, "roles": {"web": {"paths": ["etc/x"]}}},
     "watch.json: role 'web': 'paths' must be a list of absolute, normalised paths"),
    ({"version": 1, "roles": {"web": {"paths": ["/etc/x/"]}}},
     "watch.json: role 'web': 'paths' must be a list of absolute, normalised paths"),
    ({"version": 1, "roles": {"web": None}},
     "watch.json: role 'web': 'paths' must be a list of absolute, normalised paths"),
    ({"version": 1, "roles": {"web": {"paths": [], "blind": [3]}}},
     "watch.json: role 'web': 'blind' must be a list of task names"),
])
def test_a_bad_hand_off_is_one_clear_error(data: object, error: str) -> None:
    with pytest.raises(AgentError) as caught:
        from_json(data, "watch.json")
    assert str(caught.value) == error


def test_a_path_set_is_a_set_of_paths_kept_per_directory() -> None:
    paths = ["/etc/app/b.conf", "/etc/app/a.conf", "/etc/motd", "/var/lib/dpkg/status", "/etc/app/a.conf"]
    kept = PathSet(paths)
    assert len(kept) == 4 and sorted(kept) == sorted(set(paths))
    assert "/etc/app/a.conf" in kept and "/etc/motd" in kept
    for absent in ("/etc/app/a", "/etc/app/a.conf.swp", "/etc/app", "/etc/ap", "/etc/app/", 7):
        assert absent not in kept
    assert kept == PathSet(reversed(paths)) and kept != PathSet(paths[:2]) and len(PathSet()) == 0
    assert roles_of(["/etc/motd"], {"base": kept, "web": PathSet(["/etc/nginx.conf"])}) == {"base"}


# -- trees: results recorded from ansible-core 2.19 (ansible-runner events, `res`), one check-mode and one
# real run of each task in a scratch directory; kept to the keys that matter (the rest is noise here). ---

_FILE_RECURSE_ARGS = {"path": "/etc/app/conf.d", "state": "directory", "recurse": True, "mode": "u=rwX,g=rX,o=",
                      "follow": True, "src": None}
_UNARCHIVE_ARGS = {"dest": "/opt/app", "src": "/root/.ansible/tmp/ansible-tmp-1/source", "remote_src": False,
                   "list_files": False}
TREE_RESULTS: list[tuple[str, str, dict[str, Any], tuple[str, ...]]] = [
    # copy src: files/conf.d/ (a directory, trailing /): its contents into dest; check and real alike
    ("copy of a directory's contents", "copy",
     {"dest": "/etc/app/conf.d/", "src": "/repo/roles/app/files/conf.d/", "changed": True,
      "invocation": {"dest": "/etc/app/conf.d/", "src": "files/conf.d/",
                     "module_args": {"dest": "/etc/app/conf.d/", "src": "files/conf.d/"}}},
     ("/etc/app/conf.d",)),
    # copy src: files/conf.d (no trailing /): the directory itself into dest; check and real alike
    ("copy of a directory itself", "copy",
     {"dest": "/etc/app2/", "src": "/repo/roles/app/files/conf.d", "changed": False,
      "invocation": {"dest": "/etc/app2/", "src": "files/conf.d",
                     "module_args": {"dest": "/etc/app2/", "src": "files/conf.d"}}},
     ("/etc/app2/conf.d",)),
    ("file recurse=yes, check mode", "file",
     {"path": "/etc/app/conf.d", "changed": True, "invocation": {"module_args": _FILE_RECURSE_ARGS}},
     ("/etc/app/conf.d",)),
    ("file recurse=yes, real run", "file",
     {"path": "/etc/app/conf.d", "changed": True, "uid": 0, "gid": 0, "owner": "root", "group": "root",
      "mode": "0750", "state": "directory", "size": 4096, "invocation": {"module_args": _FILE_RECURSE_ARGS}},
     ("/etc/app/conf.d",)),
    # unarchive: a real run (in check mode ansible-core skips the task: runner_on_skipped, no result)
    ("unarchive, real run", "unarchive",
     {"handler": "TgzArchive", "dest": "/opt/app", "src": "/root/.ansible/tmp/ansible-tmp-1/source",
      "changed": True, "state": "directory", "invocation": {"module_args": _UNARCHIVE_ARGS}},
     ("/opt/app",)),
    # copy remote_src: true of a host directory: check mode before dest exists, real run, check once converged
    ("copy remote_src of a directory, check mode", "copy",
     {"msg": "dest directory /etc/remote.d would be created", "changed": True, "src": "/srv/conf.d/",
      "invocation": {"module_args": {"src": "/srv/conf.d/", "dest": "/etc/remote.d/", "remote_src": True}}},
     ("/etc/remote.d",)),
    ("copy remote_src of a directory, real run", "copy",
     {"dest": "/etc/remote.d/", "src": "/srv/conf.d/", "md5sum": None, "checksum": None, "changed": True,
      "mode": "0755", "state": "directory",
      "invocation": {"module_args": {"src": "/srv/conf.d/", "dest": "/etc/remote.d/", "remote_src": True}}},
     ("/etc/remote.d",)),
    # ... of the directory itself (src without /): its result's dest is the tree already; in check mode
    # before it exists nothing says src is a directory: dest/conf.d is watched as a path until it does
    ("copy remote_src of a directory itself, converged", "copy",
     {"dest": "/etc/remote2.d/conf.d", "src": "/srv/conf.d", "md5sum": None, "checksum": None,
      "changed": False, "state": "directory",
      "invocation": {"module_args": {"src": "/srv/conf.d", "dest": "/etc/remote2.d/", "remote_src": True}}},
     ("/etc/remote2.d/conf.d",)),
    ("copy remote_src of a directory itself, check mode", "copy",
     {"msg": "dest directory /etc/remote2.d would be created", "changed": True, "src": "/srv/conf.d",
      "invocation": {"module_args": {"src": "/srv/conf.d", "dest": "/etc/remote2.d/", "remote_src": True}}},
     ()),
    ("copy remote_src of one file", "copy",
     {"dest": "/etc/one.conf", "src": "/srv/a.conf", "checksum": "3f78", "changed": True, "state": "file",
      "invocation": {"module_args": {"src": "/srv/a.conf", "dest": "/etc/one.conf", "remote_src": True}}},
     ()),
    # not trees: one file copied (check mode names it in its arguments only; a real run has a checksum),
    # and a directory without recurse
    ("copy of one file, check mode", "copy",
     {"changed": True, "invocation": {"dest": "/etc/one.conf", "src": "files/conf.d/a.conf",
                                      "module_args": {"dest": "/etc/one.conf", "src": "files/conf.d/a.conf"}}},
     ()),
    ("copy of one file, real run", "copy",
     {"dest": "/etc/one.conf", "src": "/root/.ansible/tmp/ansible-tmp-1/.source.conf",
      "md5sum": "60b725f10c9c85c70d97880dfe8191b3", "checksum": "3f786850e387550fdab836ed7e6dc881de23001b",
      "changed": True, "state": "file", "invocation": {"module_args": {"dest": "/etc/one.conf",
                                                                       "src": "/root/.ansible/tmp/x"}}},
     ()),
    ("file state=directory without recurse", "file",
     {"path": "/opt/app", "changed": True, "state": "directory",
      "invocation": {"module_args": {"path": "/opt/app", "state": "directory", "recurse": False}}},
     ()),
]


@pytest.mark.parametrize(("module", "res", "trees"), [case[1:] for case in TREE_RESULTS],
                         ids=[case[0] for case in TREE_RESULTS])
def test_tree_managing_results_name_their_tree(module: str, res: dict[str, Any], trees: tuple[str, ...]) -> None:
    assert result_trees(module, res) == trees
    paths = result_paths(module, res)
    assert paths is not None and set(trees) <= set(paths)  # a tree's top is a managed path too
    found = managed_paths([event("runner_on_ok", f"ansible.builtin.{module}", res)])
    assert found["web"].trees == frozenset(trees)


def test_a_censored_or_relative_tree_is_no_tree() -> None:
    assert result_trees("unarchive", {"censored": "the output has been hidden", "dest": "/opt/app"}) == ()
    assert result_trees("unarchive", {"dest": "opt/app"}) == ()
    assert result_trees("template", {"dest": "/etc/app/", "src": "/x", "invocation": {"src": "x/"}}) == ()


def test_paths_below_a_tree_belong_to_its_role_and_the_trees_round_trip() -> None:
    found = {"app": RolePaths("app", frozenset({"/etc/app/conf.d", "/etc/app.conf"}), (),
                              frozenset({"/etc/app/conf.d"})),
             "web": RolePaths("web", frozenset({"/etc/nginx.conf"}))}
    assert roles_of(["/etc/app/conf.d/sub/deeper/c.conf"], found) == {"app"}
    assert roles_of(["/etc/app/conf.d.swp", "/etc/app"], found) == frozenset()
    assert roles_of(["/etc/app/conf.d/x"], {r: PathSet(m.paths, m.trees) for r, m in found.items()}) == {"app"}
    data = json.loads(json.dumps(to_json(found)))
    assert data["roles"]["app"]["trees"] == ["/etc/app/conf.d"] and "trees" not in data["roles"]["web"]
    assert from_json(data) == found
    with pytest.raises(AgentError, match="role 'app': 'trees' must be a list of its paths"):
        from_json({"version": 1, "roles": {"app": {"paths": ["/a"], "trees": ["/b"]}}})
