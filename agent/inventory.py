"""Pure: which roles this host has, from Ansible's own view of the inventory.

Ansible parses the inventory (`ansible-inventory --graph`, run by agent.runner), so groups, children,
ranges and host patterns behave exactly as in Ansible. A role is a group the host belongs to (directly or
through children) that has a playbook `<playbooks>/<group>.yml`. Roles run parents first, then by name:
a group nearer the top of the tree (`base`) runs before the groups nested in it (`web`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import PlanError


@dataclass(frozen=True)
class InventoryGraph:
    """host -> the groups it belongs to (all ancestors), and each group's smallest depth."""

    host_groups: dict[str, frozenset[str]]
    group_depth: dict[str, int]


@dataclass(frozen=True)
class RunPlan:
    host: str
    commit: str
    roles: tuple[str, ...]
    playbooks: tuple[Path, ...]
    inventory: Path
    project_dir: Path


def parse_graph(text: str) -> InventoryGraph:
    """Parse `ansible-inventory --graph` output into memberships."""
    stack: list[str] = []
    host_groups: dict[str, set[str]] = {}
    group_depth: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        marker = line.find("--")
        depth = 0 if marker < 0 else marker // 3
        name = line[marker + 2:] if marker >= 0 else line.strip()
        if name.startswith("@"):
            group = name[1:].rstrip(":")
            del stack[depth:]
            stack.append(group)
            group_depth[group] = min(depth, group_depth.get(group, depth))
        else:
            host_groups.setdefault(name.strip(), set()).update(stack[:depth])
    return InventoryGraph({h: frozenset(g) for h, g in host_groups.items()}, group_depth)


def roles_for(graph: InventoryGraph, host: str, playbook_names: Iterable[str]) -> tuple[str, ...]:
    """The host's roles in run order; PlanError when the host is unknown or has none."""
    groups = graph.host_groups.get(host)
    if groups is None:
        raise PlanError(f"host '{host}' is not in the inventory")
    available = set(playbook_names)
    roles = [g for g in groups if g in available]
    if not roles:
        listed = ", ".join(sorted(g for g in groups if g not in ("all", "ungrouped"))) or "none"
        raise PlanError(f"host '{host}' has no role: none of its groups ({listed}) has a playbook")
    return tuple(sorted(roles, key=lambda g: (graph.group_depth.get(g, 0), g)))


def make_plan(*, graph: InventoryGraph, host: str, commit: str, project_dir: Path,
              playbooks_dir: Path, inventory: Path, playbook_names: Iterable[str]) -> RunPlan:
    try:
        roles = roles_for(graph, host, playbook_names)
    except PlanError as e:
        raise PlanError(f"{e} (inventory {inventory}, playbooks {playbooks_dir})") from None
    return RunPlan(host=host, commit=commit, roles=roles,
                   playbooks=tuple(playbooks_dir / f"{r}.yml" for r in roles),
                   inventory=inventory, project_dir=project_dir)
