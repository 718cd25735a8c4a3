"""Pure: the two inputs of the gate that come from outside the host's own plan.

- `facts_from_data`: the collector's JSON answer of ``GET /api/v1/rollouts/{commit}`` → RolloutFacts.
  Raw JSON stops here; a malformed answer is a RolloutAnswerError (one line naming the field), which the
  caller treats like an unreachable collector (docs/rollout.md: the gate only withholds).
- `host_view`: this host's wave, roles and groups, and every wave's size, from the inventory graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from agent.errors import RolloutAnswerError
from agent.gate import HostView, RolloutFacts, WaveFacts
from agent.report import WaveSize, parse_time
from agent.rollout import Policy, assign_waves, wave_sizes


def facts_from_data(data: object) -> RolloutFacts:
    """Decode the collector's answer (shape: docs/rollout.md, What the collector answers)."""
    top = _object(data, "")
    halted = top.get("halted")
    if halted is not None:
        halted = _str(_object(halted, "halted").get("reason"), "halted.reason")
    waves = _list(top.get("waves"), "waves")
    plans = _list(top.get("approved_plans", []), "approved_plans")
    return RolloutFacts(
        first_seen_at=_time(top.get("first_seen_at"), "first_seen_at"),
        waves=tuple(_wave(w, f"waves[{i}]") for i, w in enumerate(waves)),
        halted_reason=halted,
        approved_plans=frozenset(_str(p, f"approved_plans[{i}]") for i, p in enumerate(plans)),
    )


def host_view(policy: Policy, host_groups: Mapping[str, frozenset[str]], *, host: str,
              roles: tuple[str, ...]) -> tuple[HostView, tuple[WaveSize, ...]]:
    """The host as the gate sees it, and every wave's size (for the report). ``host_groups``: the
    inventory graph at the commit (agent.inventory.InventoryGraph.host_groups); the host is in it."""
    assignment = assign_waves(policy, host_groups)
    sizes = tuple(WaveSize(name, size) for name, size in wave_sizes(policy, assignment).items())
    view = HostView(host, assignment[host], roles=frozenset(roles), groups=host_groups[host])
    return view, sizes


def _wave(raw: object, key: str) -> WaveFacts:
    wave = _object(raw, key)
    met = wave.get("criteria_met_at")
    return WaveFacts(name=_str(wave.get("name"), f"{key}.name"), size=_count(wave.get("size"), f"{key}.size"),
                     converged=_count(wave.get("converged"), f"{key}.converged"),
                     failed=_count(wave.get("failed"), f"{key}.failed"),
                     criteria_met_at=None if met is None else _time(met, f"{key}.criteria_met_at"))


def _error(key: str, message: str) -> RolloutAnswerError:
    return RolloutAnswerError(f"collector's rollout answer: {key or 'body'}: {message}")


def _object(raw: object, key: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise _error(key, f"must be an object, got {type(raw).__name__}")
    return raw


def _list(raw: object, key: str) -> list[Any]:
    if not isinstance(raw, list):
        raise _error(key, f"must be a list, got {type(raw).__name__}")
    return raw


def _str(raw: object, key: str) -> str:
    if not isinstance(raw, str):
        raise _error(key, f"must be a string, got {type(raw).__name__}")
    return raw


def _count(raw: object, key: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise _error(key, f"must be a count (an integer >= 0), got {raw!r}")
    return raw


def _time(raw: object, key: str) -> datetime:
    try:
        return parse_time(_str(raw, key))
    except ValueError as e:
        raise _error(key, f"must be an RFC 3339 time with a zone, got {raw!r}") from e
