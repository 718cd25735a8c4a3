"""agent.rollout_answer: the collector's rollout answer decoded (or refused, naming the field), and the
host's wave and wave sizes from the inventory graph."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.errors import RolloutAnswerError
from agent.inventory import parse_graph
from agent.report import WaveSize
from agent.rollout import parse_policy
from agent.rollout_answer import facts_from_data, host_view

ANSWER: dict[str, Any] = {
    "commit": "c" * 40, "policy_digest": "d" * 64, "first_seen_at": "2026-11-30T12:00:00.000Z",
    "halted": None,
    "waves": [{"name": "canary", "size": 2, "converged": 2, "failed": 0,
               "criteria_met_at": "2026-11-30T12:05:00.000Z"},
              {"name": "rest", "size": 3, "converged": 0, "failed": 0, "criteria_met_at": None}],
    "approved_plans": ["p" * 64],
}


def test_an_answer_decodes() -> None:
    facts = facts_from_data(ANSWER)
    assert facts.first_seen_at == datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert [(w.name, w.size, w.converged, w.criteria_met_at) for w in facts.waves] == [
        ("canary", 2, 2, datetime(2026, 11, 30, 12, 5, tzinfo=UTC)), ("rest", 3, 0, None)]
    assert (facts.halted_reason, facts.approved_plans) == (None, frozenset({"p" * 64}))
    halted = facts_from_data({**ANSWER, "halted": {"by": "alice", "reason": "bad canary"}})
    assert halted.halted_reason == "bad canary"


def drop(key: str) -> dict[str, Any]:
    data = copy.deepcopy(ANSWER)
    del data[key]
    return data


def wave_field(**change: object) -> dict[str, Any]:
    data = copy.deepcopy(ANSWER)
    data["waves"][1].update(change)
    return data


@pytest.mark.parametrize(("data", "says"), [
    ([], "body: must be an object"),
    (drop("waves"), "waves: must be a list, got NoneType"),
    (drop("first_seen_at"), "first_seen_at: must be a string"),
    ({**ANSWER, "first_seen_at": "yesterday"}, "first_seen_at: must be an RFC 3339 time"),
    ({**ANSWER, "halted": {"by": "alice"}}, "halted.reason: must be a string"),
    ({**ANSWER, "approved_plans": [1]}, "approved_plans[0]: must be a string"),
    (wave_field(size=-1), "waves[1].size: must be a count"),
    (wave_field(converged=True), "waves[1].converged: must be a count"),
    (wave_field(failed="0"), "waves[1].failed: must be a count"),
    (wave_field(name=None), "waves[1].name: must be a string"),
    (wave_field(criteria_met_at="2026-11-30T12:05:00"), "waves[1].criteria_met_at: must be an RFC 3339"),
])
def test_a_malformed_answer_is_one_line_naming_the_field(data: object, says: str) -> None:
    with pytest.raises(RolloutAnswerError) as caught:
        facts_from_data(data)
    assert str(caught.value).startswith(f"collector's rollout answer: {says}")
    assert "\n" not in str(caught.value)


GRAPH = """\
@all:
  |--@ungrouped:
  |--@canary:
  |  |--web01
  |--@web:
  |  |--web01
  |  |--web02
  |  |--web03
  |--@db:
  |  |--db01
  |  |--db02
"""


def test_the_host_view_comes_from_the_inventory_graph() -> None:
    policy = parse_policy("version: 1\nwaves: [{name: canary, groups: [canary]}, {name: rest}]\n")
    graph = parse_graph(GRAPH)
    view, sizes = host_view(policy, graph.host_groups, host="web01", roles=("web",))
    assert (view.wave, view.roles) == ("canary", frozenset({"web"}))
    assert {"canary", "web", "all"} <= view.groups
    assert sizes == (WaveSize("canary", 1), WaveSize("rest", 4))
    assert host_view(policy, graph.host_groups, host="db02", roles=("db",))[0].wave == "rest"
