"""Issue 13, kind 5: the repo's Ansible settings win over the agent's own.

The agent's settings sit beneath the checkout's ansible.cfg (agent.ansible_env): a setting the file names
is left to it, search paths are merged (the file's first), the agent's own ANSIBLE_* environment never
reaches Ansible, and a changed fact subset starts a fresh fact cache (here without Ansible; with real runs
in tests/test_strategy.py::test_facts_are_gathered_once_and_cached). One real run for the case repo; the
rest is the environment as built, without Ansible.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from agent import ansible_cfg, ansible_env, gathering
from agent.ansible_cfg import AnsibleCfg
from agent.ansible_env import Strategy
from tests.conftest import make_repo
from tests.semantics.cases import case_repo, load


def build(checkout: Path, **overrides: object) -> ansible_env.RunEnv:
    kwargs: dict[str, object] = {
        "plugin_dir": Path("/agent/plugins"), "tmp_dir": Path("/state/work/tmp"),
        "fact_cache": Path("/state/facts/abc"), "fact_cache_timeout_s": 600.0,
        "strategy": Strategy("gitops_mitogen_linear", (Path("/agent/strategy"), Path("/mitogen/strategy"))),
        "inherited": {}}
    kwargs.update(overrides)
    return ansible_env.build(checkout, ansible_cfg.load(checkout), **kwargs)  # type: ignore[arg-type]


@pytest.mark.ansible
def test_the_repos_ansible_cfg_wins_and_the_agents_environment_does_not_leak(cli, write_config,
                                                                               tmp_path: Path) -> None:
    """The issue's case: roles_path = ./galaxy_roles:./roles. The agent's environment carries settings
    that would break the run (another ansible.cfg, a roles path, no callbacks): none of them count."""
    case = load("repo-ansible-cfg")
    repo = case_repo(case, tmp_path / "origin")
    leaked = tmp_path / "operator-ansible.cfg"
    leaked.write_text("[defaults]\nroles_path = /nonexistent\ncallbacks_enabled = \nstrategy = free\n")
    env = {"ANSIBLE_CONFIG": str(leaked), "ANSIBLE_ROLES_PATH": "/nonexistent", "ANSIBLE_CALLBACKS_ENABLED": "",
           "ANSIBLE_GATHERING": "explicit"}
    result = cli("run", "--check", "--json", "--config", str(write_config(repo.path)), env=env)

    assert result.code == 2, result.out + result.err
    report = result.report
    assert report["errors"] == [] and report["warnings"] == []
    assert [(d["task"], d["kind"]) for d in report["drift"]] == [
        ("Message of the day", "intentional"), ("Site directory", "intentional"), ("Site index", "intentional")]
    # The repo's own callback plugin ran, in the checkout (ansible-playbook's working directory).
    log = (tmp_path / "state/releases" / repo.head / "task_log.txt").read_text()
    assert log.splitlines() == ["testhost acme.motd : Message of the day changed",
                                "testhost site_files : Site directory changed", "testhost site_files : Site index changed"]


def test_settings_the_file_names_are_left_to_it(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text(
        "[defaults]\ngathering = explicit\nfact_caching = redis\nstrategy = free\nlocal_tmp = ./tmp\n"
        "interpreter_python = /usr/bin/python3\nnocolor = false\ndeprecation_warnings = true\n"
        "callbacks_enabled = timer, profile_tasks\ncallback_plugins = ./plugins/callback\n")
    env = build(tmp_path).env
    for name in ("ANSIBLE_GATHERING", "ANSIBLE_CACHE_PLUGIN", "ANSIBLE_CACHE_PLUGIN_CONNECTION",
                 "ANSIBLE_CACHE_PLUGIN_TIMEOUT", "ANSIBLE_STRATEGY", "ANSIBLE_STRATEGY_PLUGINS",
                 "ANSIBLE_LOCAL_TEMP", "ANSIBLE_PYTHON_INTERPRETER", "ANSIBLE_NOCOLOR",
                 "ANSIBLE_DEPRECATION_WARNINGS"):
        assert name not in env, name
    assert env["ANSIBLE_CALLBACKS_ENABLED"] == "timer,profile_tasks,gitops_agent"
    assert env["ANSIBLE_CALLBACK_PLUGINS"] == f"{tmp_path}/plugins/callback:/agent/plugins/callback"
    assert build(tmp_path).strategy == "free"


def test_the_agents_settings_fill_in_what_the_file_leaves_unset(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text("[defaults]\nfact_caching_timeout = 60\n")
    run = build(tmp_path)
    assert run.env["ANSIBLE_GATHERING"] == "smart"
    assert (run.env["ANSIBLE_CACHE_PLUGIN"], run.env["ANSIBLE_CACHE_PLUGIN_CONNECTION"]) == ("jsonfile",
                                                                                             "/state/facts/abc")
    assert "ANSIBLE_CACHE_PLUGIN_TIMEOUT" not in run.env  # the file's 60 s
    assert run.env["ANSIBLE_PYTHON_INTERPRETER"] == sys.executable
    assert run.env["ANSIBLE_LOCAL_TEMP"] == "/state/work/tmp"
    assert run.env["ANSIBLE_STRATEGY"] == run.strategy == "gitops_mitogen_linear"
    assert run.env["ANSIBLE_STRATEGY_PLUGINS"].endswith(":/agent/strategy:/mitogen/strategy")
    assert build(tmp_path, strategy=None).strategy == "linear"


def test_search_paths_merge_the_files_entries_first_then_the_vendored_folders(tmp_path: Path) -> None:
    for folder in ("roles", "collections", "galaxy_roles"):
        (tmp_path / folder).mkdir()
    env = build(tmp_path).env
    home = Path("~/.ansible").expanduser()
    # Unset in the file: the vendored folder first, then Ansible's defaults.
    assert env["ANSIBLE_ROLES_PATH"] == f"{tmp_path}/roles:{home}/roles:/usr/share/ansible/roles:/etc/ansible/roles"
    assert env["ANSIBLE_COLLECTIONS_PATH"] == f"{tmp_path}/collections:{home}/collections:/usr/share/ansible/collections"
    (tmp_path / "ansible.cfg").write_text("[defaults]\nroles_path = ./galaxy_roles:~/roles\n"
                                          "collections_paths = $HOME/collections:./collections\n")
    env = build(tmp_path).env
    assert env["ANSIBLE_ROLES_PATH"] == f"{tmp_path}/galaxy_roles:{Path.home()}/roles:{tmp_path}/roles"
    assert env["ANSIBLE_COLLECTIONS_PATH"] == f"{Path.home()}/collections:{tmp_path}/collections"


def test_the_agents_own_ansible_environment_and_runner_defaults_are_removed(tmp_path: Path) -> None:
    inherited = {"ANSIBLE_CONFIG": "/etc/other.cfg", "ANSIBLE_ROLES_PATH": "/x", "ANSIBLE_STRATEGY": "free",
                 "ANSIBLE_VAULT_PASSWORD_FILE": "/root/.vault", "HOME": "/root", "ANSIBLE_STDOUT_CALLBACK": "yaml"}
    run = build(tmp_path, inherited=inherited)
    assert set(run.unset) == {"ANSIBLE_CONFIG", "ANSIBLE_HOST_KEY_CHECKING", "ANSIBLE_RETRY_FILES_ENABLED",
                              "ORIGINAL_STDOUT_CALLBACK"}  # ROLES_PATH and STRATEGY are the agent's own values
    assert run.env["ANSIBLE_ROLES_PATH"] != "/x" and run.env["ANSIBLE_STRATEGY"] == "gitops_mitogen_linear"


def test_ansible_finds_the_checkouts_file_first_but_not_in_a_world_writable_folder(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text("[defaults]\nstrategy = free\n")
    assert ansible_cfg.load(tmp_path).values == {"strategy": "free"}
    os.chmod(tmp_path, 0o777)
    try:
        assert ansible_cfg.find(tmp_path) != tmp_path / "ansible.cfg"
    finally:
        os.chmod(tmp_path, 0o755)


def test_an_inventory_the_file_names_but_the_agent_does_not_use_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text("[defaults]\ninventory = ./hosts.ini\n")
    cfg = ansible_cfg.load(tmp_path)
    (warning,) = ansible_env.warnings(cfg, inventory=tmp_path / "inventory")
    assert "names inventory ./hosts.ini; the agent uses inventory" in warning and "[D-inventory]" in warning
    assert ansible_env.warnings(cfg, inventory=tmp_path / "hosts.ini") == []
    assert ansible_env.warnings(AnsibleCfg(), inventory=tmp_path / "inventory") == []


def test_the_prologue_gathers_every_subset_the_plays_ask_for(tmp_path: Path) -> None:
    books = {"a": "- hosts: all\n  gather_subset: [min, '!hardware']\n  tasks: []\n"
                  "- hosts: all\n  gather_facts: false\n  gather_subset: [virtual]\n  tasks: []\n",
             "b": "- hosts: all\n  gather_subset: 'network,!hardware,!facter'\n  tasks: []\n",
             "c": "- hosts: all\n  tasks: []\n",
             "d": "- hosts: all\n  gather_facts: '{{ want_facts }}'\n  gather_subset: '{{ subsets }}'\n  tasks: []\n"}
    paths = {}
    for name, text in books.items():
        paths[name] = tmp_path / f"{name}.yml"
        paths[name].write_text(text)
    ab = gathering.prologue_subset([paths["a"], paths["b"]], extra=())
    assert ab is not None and ab.ansible == ["min", "network", "!hardware"]  # only what all plays leave out
    assert gathering.prologue_subset([paths["a"], paths["c"]], extra=()) == gathering.ALL  # unset: all
    assert gathering.prologue_subset([paths["d"]], extra=()) == gathering.ALL  # templated: all
    assert gathering.prologue_subset([paths["c"]], extra=(), implicit=False) is None  # gathering = explicit
    with_extra = gathering.prologue_subset([paths["a"]], extra=("virtual",))
    assert with_extra is not None and with_extra.ansible == ["min", "virtual", "!hardware"]
    assert len({s.key for s in (ab, with_extra, gathering.ALL) if s is not None}) == 3


def test_the_fact_cache_lives_in_one_private_folder_per_subset(tmp_path: Path) -> None:
    root = tmp_path / "facts"
    root.mkdir()
    (root / "testhost").write_text("{}")  # an older agent's cache, straight in facts/
    first = gathering.cache_dir(root, gathering.parse_subset(["min"]))
    (first / "testhost").write_text("{}")
    second = gathering.cache_dir(root, gathering.parse_subset(["min", "network"]))
    assert list(root.iterdir()) == [second] and stat.S_IMODE(second.stat().st_mode) == 0o700
    assert gathering.cache_dir(root, None) == root / "none" and second.exists()  # no play gathers: kept


@pytest.mark.ansible
def test_the_inventory_is_parsed_with_the_repos_ansible_cfg(tmp_path: Path) -> None:
    """The plan's `ansible-inventory --graph` runs in the checkout too: here the repo's ansible.cfg keeps
    Ansible from reading an inventory file meant for another site."""
    from agent import runner
    from agent.inventory import parse_graph
    from agent.runner import RunnerSettings

    repo = make_repo(tmp_path / "origin", {
        "ansible.cfg": "[inventory]\nignore_patterns = lab\n",
        "inventory/hosts.yml": "all:\n  children:\n    app:\n      hosts:\n        testhost:\n",
        "inventory/lab.yml": "all:\n  children:\n    web:\n      hosts:\n        testhost:\n"})
    settings = RunnerSettings(work_dir=tmp_path / "work", timeout_s=60)
    graph = parse_graph(runner.inventory_graph(repo.path / "inventory", repo.path, settings))
    assert graph.host_groups["testhost"] == {"all", "app"}
