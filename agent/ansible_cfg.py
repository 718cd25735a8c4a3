"""The Ansible configuration a checkout gives ansible-playbook, and the agent's own settings beneath it.

ansible-playbook reads one ini file, the first of: `$ANSIBLE_CONFIG`, `./ansible.cfg` (unless the working
directory is world-writable), `~/.ansible.cfg`, `/etc/ansible/ansible.cfg`. The agent runs Ansible with the
checkout as its working directory and without the agent's own `ANSIBLE_*` environment, so the file is the
checkout's `ansible.cfg`, else the user's or the system's, exactly as for `ansible-playbook` run from the
checkout. Environment variables beat the file in Ansible, so the agent sets a variable only for a setting
the file leaves unset (`defaults_env`): its own choices sit where Ansible's built-in defaults sit. Search
paths are merged instead (the file's first, then the checkout's vendored `roles/` and `collections/`).
Setting names, ini keys and types follow ansible-core's `config/base.yml`; docs/ansible-semantics.md lists
where the agent differs from ansible-playbook.
"""

from __future__ import annotations

import configparser
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Setting:
    env: str  # the environment variable Ansible reads for it
    ini: tuple[tuple[str, str], ...]  # (section, key), first found wins
    default: str | None = None  # Ansible's built-in default, as text ({home}: ANSIBLE_HOME)


SETTINGS: dict[str, Setting] = {
    "home": Setting("ANSIBLE_HOME", (("defaults", "home"),), "~/.ansible"),
    "roles_path": Setting("ANSIBLE_ROLES_PATH", (("defaults", "roles_path"),),
                          "{home}/roles:/usr/share/ansible/roles:/etc/ansible/roles"),
    "collections_path": Setting("ANSIBLE_COLLECTIONS_PATH", (("defaults", "collections_path"),
                                                             ("defaults", "collections_paths")),
                                "{home}/collections:/usr/share/ansible/collections"),
    "callback_plugins": Setting("ANSIBLE_CALLBACK_PLUGINS", (("defaults", "callback_plugins"),),
                                "{home}/plugins/callback:/usr/share/ansible/plugins/callback"),
    "callbacks_enabled": Setting("ANSIBLE_CALLBACKS_ENABLED", (("defaults", "callbacks_enabled"),
                                                               ("defaults", "callback_whitelist")), ""),
    "strategy": Setting("ANSIBLE_STRATEGY", (("defaults", "strategy"),), "linear"),
    "strategy_plugins": Setting("ANSIBLE_STRATEGY_PLUGINS", (("defaults", "strategy_plugins"),),
                                "{home}/plugins/strategy:/usr/share/ansible/plugins/strategy"),
    "gathering": Setting("ANSIBLE_GATHERING", (("defaults", "gathering"),), "implicit"),
    "fact_caching": Setting("ANSIBLE_CACHE_PLUGIN", (("defaults", "fact_caching"),), "memory"),
    "fact_caching_connection": Setting("ANSIBLE_CACHE_PLUGIN_CONNECTION",
                                       (("defaults", "fact_caching_connection"),)),
    "fact_caching_timeout": Setting("ANSIBLE_CACHE_PLUGIN_TIMEOUT", (("defaults", "fact_caching_timeout"),),
                                    "86400"),
    "interpreter_python": Setting("ANSIBLE_PYTHON_INTERPRETER", (("defaults", "interpreter_python"),),
                                  "auto"),
    "local_tmp": Setting("ANSIBLE_LOCAL_TEMP", (("defaults", "local_tmp"),), "{home}/tmp"),
    "inventory": Setting("ANSIBLE_INVENTORY", (("defaults", "inventory"), ("defaults", "hostfile"))),
    "stdout_callback": Setting("ANSIBLE_STDOUT_CALLBACK", (("defaults", "stdout_callback"),), "default"),
    # Output only: what Ansible prints, never what it does.
    "nocolor": Setting("ANSIBLE_NOCOLOR", (("defaults", "nocolor"),), "False"),
    "localhost_warning": Setting("ANSIBLE_LOCALHOST_WARNING", (("defaults", "localhost_warning"),), "True"),
    "inventory_unparsed_warning": Setting("ANSIBLE_INVENTORY_UNPARSED_WARNING",
                                          (("inventory", "inventory_unparsed_warning"),), "True"),
    "deprecation_warnings": Setting("ANSIBLE_DEPRECATION_WARNINGS", (("defaults", "deprecation_warnings"),),
                                    "True"),
    "system_warnings": Setting("ANSIBLE_SYSTEM_WARNINGS", (("defaults", "system_warnings"),), "True"),
    "devel_warning": Setting("ANSIBLE_DEVEL_WARNING", (("defaults", "devel_warning"),), "True"),
}
PATH_SETTINGS = frozenset({"roles_path", "collections_path", "callback_plugins", "strategy_plugins",
                           "local_tmp", "fact_caching_connection", "inventory"})
VENDORED = {"roles_path": "roles", "collections_path": "collections"}  # checkout dirs the agent adds


@dataclass(frozen=True)
class AnsibleCfg:
    """The ini file Ansible reads for a checkout (path None: none) and the values it sets, by setting."""

    path: Path | None = None
    values: Mapping[str, str] = field(default_factory=dict)

    def sets(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str) -> str | None:
        """The file's value, or Ansible's default (None when Ansible has none)."""
        if name in self.values:
            return self.values[name]
        default = SETTINGS[name].default
        if default is None or "{home}" not in default:
            return default
        return default.replace("{home}", self.values.get("home", "~/.ansible"))

    def paths(self, name: str) -> list[Path]:
        """A path-list setting as Ansible resolves it: ~ and $VARS expanded, relative entries taken from
        the ini file's folder (from the working directory for built-in defaults)."""
        value = self.get(name)
        if not value:
            return []
        base = self.path.parent if name in self.values and self.path is not None else Path.cwd()
        separator = "," if name == "inventory" else os.pathsep
        return [_resolve(entry.strip(), base) for entry in value.split(separator) if entry.strip()]

    def search_path(self, name: str, checkout: Path) -> list[Path]:
        """roles_path or collections_path as the agent runs it: the file's entries (Ansible's defaults
        when it sets none) with the checkout's vendored folder merged in, after the file's own entries
        and before Ansible's defaults."""
        vendored = checkout / VENDORED[name]
        paths = self.paths(name)
        extra = [vendored] if vendored.is_dir() and vendored not in paths else []
        return paths + extra if self.sets(name) else extra + paths


def _resolve(entry: str, base: Path) -> Path:
    path = Path(os.path.expandvars(Path(entry.strip("'\"")).expanduser()))
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def find(checkout: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """The ini file ansible-playbook started in `checkout` reads (Ansible's rule, ansible-core's
    config/manager.py find_ini_config_file): $ANSIBLE_CONFIG (a folder means its ansible.cfg),
    ./ansible.cfg unless the folder is world-writable, ~/.ansible.cfg, /etc/ansible/ansible.cfg; the
    first that exists and can be read. `environ` is the environment Ansible gets: its ANSIBLE_CONFIG and
    HOME count. Without it (the agent's own runs, which never pass ANSIBLE_CONFIG on), ~ is this
    process's home."""
    candidates = []
    if environ is not None and "ANSIBLE_CONFIG" in environ:
        named = Path(environ["ANSIBLE_CONFIG"]).expanduser()
        candidates.append(named / "ansible.cfg" if named.is_dir() else named)
    try:
        if not checkout.stat().st_mode & stat.S_IWOTH:  # Ansible ignores it in a world-writable folder
            candidates.append(checkout / "ansible.cfg")
    except OSError:
        candidates.append(checkout / "ansible.cfg")  # not there (yet): nothing to find in it either
    home = Path("~").expanduser() if environ is None else \
        Path(environ["HOME"]) if environ.get("HOME") else None
    if home is not None:
        candidates.append(home / ".ansible.cfg")
    candidates.append(Path("/etc/ansible/ansible.cfg"))
    for path in candidates:
        if path.is_file() and os.access(path, os.R_OK):
            return path
    return None


def load(checkout: Path) -> AnsibleCfg:
    """The configuration ansible-playbook would read for `checkout`. An unreadable or invalid file is
    read as empty here; Ansible itself then reports it when the run starts."""
    path = find(checkout)
    if path is None:
        return AnsibleCfg()
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, configparser.Error):
        return AnsibleCfg(path=path)
    values = {}
    for name, setting in SETTINGS.items():
        for section, key in setting.ini:
            if parser.has_option(section, key):
                values[name] = parser.get(section, key).strip()
                break
    return AnsibleCfg(path=path, values=values)


def is_true(value: str | None) -> bool:
    """Ansible's boolean reading of a setting's text."""
    return (value or "").strip().lower() in ("1", "y", "yes", "on", "t", "true")
