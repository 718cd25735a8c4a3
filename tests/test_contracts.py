"""The import-linter contracts of pyproject.toml keep covering every agent module: a new module must be
placed in the layers (import-linter checks that: exhaustive) and named by the contracts that keep the
agent side off Ansible's Python API. (The collector's two contracts: tests/collector/
test_collector_contracts.py.)"""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.conftest import ROOT

AGENT = ROOT / "agent"
# They may import ansible: they are Ansible plugins, the module that runs Ansible, and the vault reader.
ANSIBLE_ALLOWED = {"agent.ansible_plugins", "agent.runner", "agent.vault"}


def agent_modules() -> set[str]:
    modules = {f"agent.{p.stem}" for p in AGENT.glob("*.py") if p.stem != "__init__"}
    return modules | {f"agent.{p.parent.name}" for p in AGENT.glob("*/__init__.py")} - {"agent.collector"}


def contracts() -> list[dict[str, object]]:
    data = tomllib.loads(Path(ROOT / "pyproject.toml").read_text())
    found: list[dict[str, object]] = data["tool"]["importlinter"]["contracts"]
    return found


def sources(forbidden: str) -> set[str]:
    return {m for c in contracts() if c["type"] == "forbidden" and forbidden in c["forbidden_modules"]  # type: ignore[operator]
            for m in c["source_modules"]}  # type: ignore[attr-defined]


def test_every_agent_module_but_the_ansible_ones_is_kept_off_ansible() -> None:
    assert agent_modules() - ANSIBLE_ALLOWED - sources("ansible") == set()
    assert agent_modules() - ANSIBLE_ALLOWED - sources("ansible_runner") == set()


def test_the_layers_contract_is_exhaustive_over_the_agent() -> None:
    (layers,) = [c for c in contracts() if c["name"] == "Agent layers point down"]
    assert layers["exhaustive"] is True and layers["containers"] == ["agent"]
    named = {f"agent.{m.strip()}" for line in layers["layers"] for m in line.split("|")}  # type: ignore[attr-defined]
    assert named == agent_modules()
