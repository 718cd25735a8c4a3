"""The collector's import-linter contracts in pyproject.toml stay exhaustive as agent/ grows.

import-linter has no allow-list contract, so "the collector imports only these agent modules" is written as
a `forbidden` contract over every other module under agent/. A module added to agent/ and not named there
would be importable from the collector unseen; these tests fail instead, naming it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the collector may import from the agent side (besides the root package's __version__): shared pure
# modules, and the reason each is needed.
ALLOWED = {
    "agent.errors": "AgentError, ReportError: the one exception hierarchy",
    "agent.report": "Report, from_dict, Status, DriftKind, format_time/parse_time",
    "agent.redact": "redact_url: database URLs in log lines and errors",
    "agent.rollout": "Policy, criteria_met/criteria_failed: a rollout's criteria, judged as the agents do",
}


def agent_modules() -> set[str]:
    """Every top-level module and package under agent/ (agent/X.py, agent/X/__init__.py)."""
    agent = ROOT / "agent"
    files = {f"agent.{p.stem}" for p in agent.glob("*.py") if p.stem != "__init__"}
    packages = {f"agent.{p.parent.name}" for p in agent.glob("*/__init__.py")}
    return files | packages


def contract(name_starts: str) -> dict[str, Any]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    found = [c for c in config["tool"]["importlinter"]["contracts"] if c["name"].startswith(name_starts)]
    assert len(found) == 1, f"one contract named {name_starts!r}..., found {len(found)}"
    return found[0]


def differences(listed: list[str], expected: set[str]) -> str:
    missing, extra = sorted(expected - set(listed)), sorted(set(listed) - expected)
    return f"add {missing}; remove {extra}" if missing or extra else ""


def test_the_collector_allow_list_forbids_every_other_agent_module():
    allow = contract("The collector imports only")
    assert allow["type"] == "forbidden" and allow["source_modules"] == ["agent.collector"]
    assert not allow.get("allow_indirect_imports")  # an allowed module must not lead elsewhere either
    expected = agent_modules() - {"agent.collector", *ALLOWED}
    assert not differences(allow["forbidden_modules"], expected), differences(allow["forbidden_modules"],
                                                                              expected)
    for module in ALLOWED:
        assert module.removeprefix("agent.") in allow["name"], module


def test_no_agent_module_imports_the_collector():
    never = contract("The agent side never imports the collector")
    expected = agent_modules() - {"agent.collector"}
    assert never["forbidden_modules"] == ["agent.collector"]
    assert not differences(never["source_modules"], expected), differences(never["source_modules"], expected)


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_each_allowed_module_exists(module):
    assert module in agent_modules()


def test_the_package_docstring_names_the_allow_list():
    import agent.collector

    doc = agent.collector.__doc__ or ""
    for module in ALLOWED:
        assert f"`{module}`" in doc, module


# The collector's pure core: modules ingest, the API and the UI call with values. Each must be held by a
# contract forbidding the database and HTTP libraries, so that purity is checked rather than hoped for.
PURE_COLLECTOR = ["agent.collector.alerts", "agent.collector.drift_review", "agent.collector.drift_exceptions",
                  "agent.collector.compliance"]


@pytest.mark.parametrize("module", PURE_COLLECTOR)
def test_each_pure_collector_module_is_held_by_a_purity_contract(module):
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    holding = [c for c in config["tool"]["importlinter"]["contracts"]
               if c["type"] == "forbidden" and module in c["source_modules"]
               and {"sqlalchemy", "httpx", "starlette"} <= set(c["forbidden_modules"])]
    assert holding, f"{module}: add it to a contract forbidding sqlalchemy, httpx and starlette"
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
