"""Pure: a commit's rollout state from the hosts' latest outcomes on it (docs/rollout.md).

No database and no clock: the store hands in each host's latest outcome on the commit and the
``criteria_met_at`` times already recorded (they never go back); this returns every wave's counts,
when it met the criteria of the wave after it, and the automatic halt, if any.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.rollout import Criteria, Policy, criteria_failed, criteria_met


class Outcome(enum.StrEnum):
    CONVERGED = "converged"  # applied (or nothing to do) and the recheck was clean
    FAILED = "failed"  # the apply or the recheck failed
    PENDING = "pending"  # checked, waiting at the gate, or not reported yet


@dataclass(frozen=True)
class HostOutcome:
    """A host's latest outcome on the commit, from its latest report (``at``: that report's time)."""
    host: str
    wave: str
    outcome: Outcome
    at: datetime


@dataclass(frozen=True)
class WaveState:
    name: str
    size: int
    converged: int
    failed: int
    criteria_met_at: datetime | None


@dataclass(frozen=True)
class RolloutState:
    waves: tuple[WaveState, ...]
    halt_reason: str | None  # the first wave that can no longer meet its criteria, None if none


def rollout_state(policy: Policy, *, first_seen_at: datetime, sizes: Mapping[str, int],
                  outcomes: Iterable[HostOutcome], recorded_met_at: Mapping[str, datetime]) -> RolloutState:
    """Every wave's state. Wave k is judged by the criteria of wave k+1 (the last by the default
    criteria: all converged, none failed). A wave whose successor cannot open any more halts. An empty
    wave meets its criteria when it opens (``first_seen_at`` for the first; else the previous wave's
    ``criteria_met_at`` plus its soak), so it never blocks the waves after it."""
    by_wave: dict[str, list[HostOutcome]] = {w.name: [] for w in policy.waves}
    for item in outcomes:
        if item.wave in by_wave:
            by_wave[item.wave].append(item)
    waves: list[WaveState] = []
    halt_reason = None
    opened_at: datetime | None = first_seen_at
    for k, wave in enumerate(policy.waves):
        criteria = policy.waves[k + 1].criteria if k + 1 < len(policy.waves) else Criteria()
        size, items = sizes.get(wave.name, 0), by_wave[wave.name]
        failed = sum(1 for i in items if i.outcome is Outcome.FAILED)
        met_at = recorded_met_at.get(wave.name) or first_met_at(criteria, size, items)
        if size == 0 and met_at is None:
            met_at = opened_at
        waves.append(WaveState(wave.name, size, sum(1 for i in items if i.outcome is Outcome.CONVERGED),
                               failed, met_at))
        if halt_reason is None and met_at is None and criteria_failed(criteria, size=size, failed=failed):
            allowed = criteria.max_failed.of(size, round_down=True)
            halt_reason = f"wave {wave.name}: {failed} of {size} failed, at most {allowed} allowed"
        following = policy.waves[k + 1] if k + 1 < len(policy.waves) else None
        opened_at = met_at + timedelta(seconds=following.soak_s) if met_at and following else None
    return RolloutState(tuple(waves), halt_reason)


def first_met_at(criteria: Criteria, size: int, items: list[HostOutcome]) -> datetime | None:
    """The earliest report time at which the latest outcomes up to then meet ``criteria``."""
    converged = failed = 0
    for item in sorted(items, key=lambda i: i.at):
        converged += item.outcome is Outcome.CONVERGED
        failed += item.outcome is Outcome.FAILED
        if criteria_met(criteria, size=size, converged=converged, failed=failed):
            return item.at
    return None
