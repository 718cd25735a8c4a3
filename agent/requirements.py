"""The collections and roles a config repo needs must be vendored in it: hosts never reach Galaxy.

`requirements.yml` (at the repo root, or `collections/requirements.yml` / `roles/requirements.yml`)
lists them; each must be present as `collections/ansible_collections/<namespace>/<name>/` or
`roles/<name>/` in the checkout, which agent.runner puts on Ansible's search paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent.errors import PlanError

FILES = ("requirements.yml", "collections/requirements.yml", "roles/requirements.yml")


def _names(entries: Any, where: str) -> list[str]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise PlanError(f"{where}: expected a list")
    names = []
    for entry in entries:
        name = entry.get("name") or entry.get("src") if isinstance(entry, dict) else entry
        if not isinstance(name, str) or not name:
            raise PlanError(f"{where}: an entry has no name")
        names.append(name)
    return names


def _parse(path: Path) -> tuple[list[str], list[str]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise PlanError(f"{path.name}: cannot be read as YAML ({e})") from e
    if isinstance(data, list):  # the old format: a list of roles
        return [], _names(data, f"{path.name}")
    if not isinstance(data, dict):
        return [], []
    return (_names(data.get("collections"), f"{path.name}: collections"),
            _names(data.get("roles"), f"{path.name}: roles"))


def missing(checkout: Path) -> list[str]:
    """What the repo's requirements name but does not vendor (empty: all present)."""
    absent = []
    for rel in FILES:
        path = checkout / rel
        if not path.is_file():
            continue
        collections, roles = _parse(path)
        for name in collections:
            namespace, _, short = name.partition(".")
            if not (checkout / "collections/ansible_collections" / namespace / short).is_dir():
                absent.append(f"collection {name}")
        for name in roles:
            short = name.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
            if not (checkout / "roles" / short).is_dir():
                absent.append(f"role {name}")
    return absent


def check(checkout: Path) -> None:
    absent = missing(checkout)
    if absent:
        raise PlanError(f"requirements name {', '.join(absent)}, not vendored in the repository "
                        "(collections/ansible_collections/<ns>/<name>, roles/<name>); hosts never "
                        "download from Galaxy")
