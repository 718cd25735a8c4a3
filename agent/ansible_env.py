"""The environment of the agent's Ansible runs: the checkout's ansible.cfg first, the agent's beneath it.

Ansible reads an environment variable before its ini file, so every variable set here would beat the
repo's ansible.cfg. The agent therefore sets a variable only where the file is silent (its own choices
then sit where Ansible's built-in defaults would), and merges the search paths it needs into the file's
own. Variables that ansible-runner forces but the agent does not want (host key checking off, retry
files off) and every `ANSIBLE_*` variable of the agent's own environment (ANSIBLE_CONFIG included) are
removed before Ansible starts (agent.noninteractive does it), so the run depends on the checkout and the
agent's configuration only. docs/ansible-semantics.md lists each difference from ansible-playbook.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.ansible_cfg import SETTINGS, AnsibleCfg

# Output only (what Ansible prints, never what it does): quiet and plain unless the repo says otherwise.
OUTPUT_DEFAULTS = {"nocolor": "True", "localhost_warning": "False", "inventory_unparsed_warning": "False",
                   "deprecation_warnings": "False", "system_warnings": "False", "devel_warning": "False"}
# ansible-runner sets these itself (host key checking off unless set; retry files always off).
RUNNER_FORCED = ("ANSIBLE_HOST_KEY_CHECKING", "ANSIBLE_RETRY_FILES_ENABLED", "ORIGINAL_STDOUT_CALLBACK")
# ansible-runner's own: its event callback is how the agent sees what Ansible did.
RUNNER_OWNED = frozenset({"ANSIBLE_STDOUT_CALLBACK", "ANSIBLE_CALLBACK_PLUGINS"})
CALLBACK = "gitops_agent"


@dataclass(frozen=True)
class Strategy:
    """The agent's strategy plugin: its name and the folders its plugins live in."""

    name: str
    plugin_dirs: tuple[Path, ...]


@dataclass(frozen=True)
class RunEnv:
    env: dict[str, str]  # variables to set
    unset: tuple[str, ...]  # variables to remove from what ansible-runner passes on
    strategy: str  # the strategy Ansible runs plays with unless a play names one


def _join(paths: list[Path]) -> str:
    unique = list(dict.fromkeys(str(p) for p in paths))
    return os.pathsep.join(unique)


def _paths_env(cfg: AnsibleCfg, checkout: Path, plugin_dir: Path) -> dict[str, str]:
    enabled = [c.strip() for c in (cfg.get("callbacks_enabled") or "").split(",") if c.strip()]
    return {
        "ANSIBLE_ROLES_PATH": _join(cfg.search_path("roles_path", checkout)),
        "ANSIBLE_COLLECTIONS_PATH": _join(cfg.search_path("collections_path", checkout)),
        "ANSIBLE_CALLBACK_PLUGINS": _join([*cfg.paths("callback_plugins"), plugin_dir / "callback"]),
        "ANSIBLE_CALLBACKS_ENABLED": ",".join(dict.fromkeys([*enabled, CALLBACK])),
    }


def _defaults_env(cfg: AnsibleCfg, defaults: Mapping[str, str]) -> dict[str, str]:
    return {SETTINGS[name].env: value for name, value in defaults.items() if not cfg.sets(name)}


def _fact_cache_defaults(cfg: AnsibleCfg, cache: Path | None, timeout_s: float) -> dict[str, str]:
    if cache is None:
        return {}
    defaults = {"gathering": "smart"}
    if not cfg.sets("fact_caching"):  # the repo's own cache plugin keeps its own connection
        defaults.update(fact_caching="jsonfile", fact_caching_connection=str(cache),
                        fact_caching_timeout=str(int(timeout_s)))
    return defaults


def build(checkout: Path, cfg: AnsibleCfg, *, plugin_dir: Path, tmp_dir: Path, fact_cache: Path | None,
          fact_cache_timeout_s: float, strategy: Strategy | None, inherited: Mapping[str, str]) -> RunEnv:
    """The variables for one run of `checkout` whose ini file is `cfg`.

    `fact_cache`: the agent's jsonfile fact cache folder (None: no cache). `strategy`: the agent's
    strategy plugin (None: Ansible's linear). `inherited`: the agent's own environment."""
    defaults = {**OUTPUT_DEFAULTS, "local_tmp": str(tmp_dir), "interpreter_python": sys.executable,
                **_fact_cache_defaults(cfg, fact_cache, fact_cache_timeout_s)}
    env = {**_defaults_env(cfg, defaults), **_paths_env(cfg, checkout, plugin_dir)}
    effective = cfg.get("strategy") or "linear"
    if strategy is not None and not cfg.sets("strategy"):
        env["ANSIBLE_STRATEGY"] = effective = strategy.name
        env["ANSIBLE_STRATEGY_PLUGINS"] = _join([*cfg.paths("strategy_plugins"), *strategy.plugin_dirs])
    leaked = [k for k in inherited if k.startswith("ANSIBLE_") and not k.startswith("ANSIBLE_VAULT")]
    unset = [k for k in (*leaked, *RUNNER_FORCED) if k not in env and k not in RUNNER_OWNED]
    return RunEnv(env=env, unset=tuple(dict.fromkeys(unset)), strategy=effective)


def warnings(cfg: AnsibleCfg, *, inventory: Path) -> list[str]:
    """Where the agent knowingly runs differently from what the repo's ansible.cfg says (for the report)."""
    found = []
    if cfg.sets("inventory") and cfg.path is not None:
        named = cfg.paths("inventory")
        if inventory.resolve() not in [p.resolve() for p in named]:
            found.append(f"{cfg.path.name} names inventory {cfg.values['inventory']}; the agent uses "
                         f"{inventory.name} (its `inventory` setting) [D-inventory]")
    return found
