"""Pure: may this host apply commit C now? Windows, freezes, and the rollout gate (docs/rollout.md).

No I/O and no clock: the caller passes ``now`` (an aware datetime) and what the collector answered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from agent.report import GateState
from agent.rollout import DAYS, Freeze, Policy, Wave, Window, splay_offset

ALLOWED, WAITING, HALTED, FROZEN = GateState.ALLOWED, GateState.WAITING, GateState.HALTED, GateState.FROZEN
UNREACHABLE = GateState.UNREACHABLE


@dataclass(frozen=True)
class WaveFacts:
    """What the collector knows of one wave for the commit: its counts, and when it met the criteria
    of the wave after it (``criteria_met_at``; also set when an operator skipped the wave)."""
    name: str
    size: int
    converged: int
    failed: int
    criteria_met_at: datetime | None = None


@dataclass(frozen=True)
class RolloutFacts:
    """The collector's answer for one (commit, policy digest)."""
    first_seen_at: datetime
    waves: tuple[WaveFacts, ...]
    halted_reason: str | None = None
    approved_plans: frozenset[str] = frozenset()


@dataclass(frozen=True)
class HostView:
    """This host as the gate sees it: its name, wave, roles and inventory groups."""
    name: str
    wave: str
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class GateDecision:
    allow: bool
    state: GateState
    reason: str


def plan_digest(items: Iterable[tuple[str, str, str]]) -> str:
    """sha256 (hex) of a plan: its (role, task identity, diff text) items, order-independent."""
    text = json.dumps(sorted(items), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def active_freeze(freezes: Iterable[Freeze], now: datetime) -> Freeze | None:
    return next((f for f in freezes if f.start_at <= now < f.end_at), None)


def windows_for(policy: Policy, host: HostView) -> tuple[Window, ...]:
    """The windows that name one of the host's roles or groups."""
    return tuple(w for w in policy.windows if set(w.roles) & host.roles or set(w.groups) & host.groups)


def window_starts(window: Window, now: datetime, days: range) -> Iterable[datetime]:
    """The window's starts (UTC) on the local dates ``now`` + each of ``days``, in order.

    A local start that does not exist (spring forward) falls after the gap; one that occurs twice
    (fall back) is the first occurrence (zoneinfo's fold=0).
    """
    zone = ZoneInfo(window.timezone)
    today = now.astimezone(zone).date()
    for offset in days:
        date = today + timedelta(days=offset)
        if DAYS[date.weekday()] in window.days:
            yield datetime.combine(date, window.start, tzinfo=zone).astimezone(UTC)


def window_open(window: Window, now: datetime) -> bool:
    span = timedelta(seconds=window.duration_s)
    return any(start <= now < start + span for start in window_starts(window, now, range(-8, 1)))


def next_window_start(window: Window, now: datetime) -> datetime:
    return next(s for s in window_starts(window, now, range(0, 9)) if s > now)


def decide_gate(*, policy: Policy, host: HostView, new_commit: bool, facts: RolloutFacts | None,
                commit_seen_at: datetime, plan: str | None, now: datetime) -> GateDecision:
    """May ``host`` apply the commit now? Checks in the order of docs/rollout.md, The gate.

    ``new_commit``: the commit is not the host's last converged one (False: corrective drift).
    ``facts``: the collector's answer, None when it could not be reached. ``commit_seen_at``: when this
    host first saw the commit (the first wave's opening when the collector is unreachable). ``plan``:
    the host's plan digest (plan_digest) for its approval-required roles, None when there are none.
    """
    freeze = active_freeze(policy.freezes, now)
    if freeze is not None:
        return GateDecision(False, FROZEN, f"frozen: {freeze.name} until {_utc(freeze.end_at)}")
    windows = windows_for(policy, host)
    if not new_commit:
        closed = [w for w in windows if not w.corrective_anytime and not window_open(w, now)]
        return _closed(closed, now) if closed else GateDecision(True, ALLOWED, "corrective drift")
    index = [w.name for w in policy.waves].index(host.wave)
    if facts is None:
        if index > 0 or policy.on_collector_unreachable == "hold-all":
            return GateDecision(False, UNREACHABLE, f"waiting: collector unreachable, wave {host.wave} "
                                f"holds new commits ({policy.on_collector_unreachable})")
        opened_at = commit_seen_at
    else:
        if facts.halted_reason is not None:
            return GateDecision(False, HALTED, f"halted: {facts.halted_reason}")
        opened = _opened_at(policy.waves, index, facts)
        if isinstance(opened, GateDecision):
            return opened
        opened_at = opened
    start_at = opened_at + splay_offset(policy, host.name)
    if now < start_at:
        return GateDecision(False, WAITING, f"waiting: wave {host.wave} opens for this host at "
                            f"{_utc(start_at)} (soak and splay)")
    closed = [w for w in windows if not window_open(w, now)]
    if closed:
        return _closed(closed, now)
    if set(policy.approve_roles) & host.roles:
        approved = facts.approved_plans if facts is not None else frozenset()
        if plan is None or plan not in approved:
            return GateDecision(False, WAITING, f"waiting: approval of plan {(plan or '?')[:12]}")
    return GateDecision(True, ALLOWED, f"wave {host.wave} open")


def _opened_at(waves: tuple[Wave, ...], index: int, facts: RolloutFacts) -> datetime | GateDecision:
    """When wave ``index`` opened: the chain of earlier waves' criteria_met_at plus each soak."""
    known = {w.name: w for w in facts.waves}
    opened_at = facts.first_seen_at
    for k in range(1, index + 1):
        previous = known.get(waves[k - 1].name)
        if previous is None:
            return GateDecision(False, WAITING, f"waiting: the collector knows no wave {waves[k - 1].name}")
        if previous.criteria_met_at is None:
            crit = waves[k].criteria
            needs = (f"{crit.converged.percent:g}%" if crit.converged.percent is not None
                     else str(crit.converged.count))
            return GateDecision(False, WAITING, f"waiting: wave {previous.name} {previous.converged}/"
                                f"{previous.size} converged, needs {needs}")
        opened_at = max(opened_at, previous.criteria_met_at + timedelta(seconds=waves[k].soak_s))
    return opened_at


def _closed(windows: list[Window], now: datetime) -> GateDecision:
    window = min(windows, key=lambda w: next_window_start(w, now))
    local = next_window_start(window, now).astimezone(ZoneInfo(window.timezone))
    return GateDecision(False, WAITING, f"waiting: window {window.name} opens "
                        f"{local:%a %Y-%m-%d %H:%M} {window.timezone}")


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
