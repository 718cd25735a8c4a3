"""agent.collector.rollout_state: a commit's waves, criteria and automatic halt from the hosts' outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.collector.rollout_state import HostOutcome, Outcome, rollout_state
from agent.rollout import parse_policy

POLICY = parse_policy("""\
version: 1
waves:
  - name: canary
    groups: [canary]
  - name: early
    share: 10%
    soak: 30m
    criteria: {converged: 80%, max_failed: 1}
  - name: rest
    soak: 1h
""")
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SIZES = {"canary": 5, "early": 10, "rest": 85}


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def outcomes(wave: str, *states: tuple[Outcome, int]) -> list[HostOutcome]:
    return [HostOutcome(f"{wave}{i}", wave, state, at(m)) for i, (state, m) in enumerate(states)]


C, F, P = Outcome.CONVERGED, Outcome.FAILED, Outcome.PENDING


def test_a_wave_meets_its_successors_criteria_at_the_report_that_tips_it() -> None:
    # the canary is judged by the early wave's criteria: 80% of 5 converged (4), at most 1 failed
    reported = outcomes("canary", (C, 3), (C, 1), (F, 2), (C, 7), (C, 5))
    state = rollout_state(POLICY, first_seen_at=T0, sizes=SIZES, outcomes=reported, recorded_met_at={})
    canary = state.waves[0]
    assert (canary.converged, canary.failed, canary.criteria_met_at) == (4, 1, at(7))
    assert state.halt_reason is None
    assert [w.criteria_met_at for w in state.waves[1:]] == [None, None]


def test_pending_hosts_do_not_count_and_nothing_is_met_early() -> None:
    reported = outcomes("canary", (C, 1), (C, 2), (C, 3), (P, 4), (P, 5))
    state = rollout_state(POLICY, first_seen_at=T0, sizes=SIZES, outcomes=reported, recorded_met_at={})
    assert (state.waves[0].converged, state.waves[0].criteria_met_at, state.halt_reason) == (3, None, None)


def test_too_many_failures_halt_the_rollout_naming_the_wave() -> None:
    reported = outcomes("canary", (C, 1), (F, 2), (F, 3))
    state = rollout_state(POLICY, first_seen_at=T0, sizes=SIZES, outcomes=reported, recorded_met_at={})
    assert state.halt_reason == "wave canary: 2 of 5 failed, at most 1 allowed"
    # the last wave is judged by the default criteria: no failure at all
    late = outcomes("canary", *[(C, 1)] * 5) + outcomes("early", *[(C, 40)] * 10) + outcomes("rest", (F, 99))
    state = rollout_state(POLICY, first_seen_at=T0, sizes=SIZES, outcomes=late, recorded_met_at={})
    assert state.halt_reason == "wave rest: 1 of 85 failed, at most 0 allowed"


def test_a_recorded_criteria_time_never_goes_back() -> None:
    """A wave that met its criteria and later lost a host is not re-judged: no retroactive halt."""
    reported = outcomes("canary", (C, 1), (F, 2), (F, 3))
    state = rollout_state(POLICY, first_seen_at=T0, sizes=SIZES, outcomes=reported,
                          recorded_met_at={"canary": at(1)})
    assert (state.waves[0].criteria_met_at, state.halt_reason) == (at(1), None)


def test_an_empty_wave_meets_its_criteria_when_it_opens() -> None:
    sizes = {"canary": 0, "early": 10, "rest": 85}
    state = rollout_state(POLICY, first_seen_at=T0, sizes=sizes, outcomes=[], recorded_met_at={})
    assert state.waves[0].criteria_met_at == T0
    # an empty early wave opens 30 min (its soak) after the canary met the criteria, and is met then
    sizes = {"canary": 5, "early": 0, "rest": 85}
    canary = outcomes("canary", *[(C, 10)] * 5)
    state = rollout_state(POLICY, first_seen_at=T0, sizes=sizes, outcomes=canary, recorded_met_at={})
    assert [w.criteria_met_at for w in state.waves] == [at(10), at(40), None]


def test_reports_of_an_unknown_wave_are_left_out() -> None:
    stray = [HostOutcome("x", "old-wave", C, at(1))]
    state = rollout_state(POLICY, first_seen_at=T0, sizes=SIZES, outcomes=stray, recorded_met_at={})
    assert sum(w.converged for w in state.waves) == 0
