"""agent.gate: may this host apply commit C now? Table-driven over wave, criteria, window, freeze,
approval and an unreachable collector; windows across time zones and daylight saving."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

import pytest

from agent.gate import (
    ALLOWED,
    FROZEN,
    HALTED,
    UNREACHABLE,
    WAITING,
    HostView,
    RolloutFacts,
    WaveFacts,
    decide_gate,
    plan_digest,
    window_open,
)
from agent.rollout import Window, parse_policy, splay_offset

POLICY = parse_policy("""\
version: 1
splay: 10m
waves:
  - name: canary
    groups: [canary]
  - name: early
    share: 10%
    soak: 30m
    criteria: {converged: 95%, max_failed: 1}
  - name: rest
    soak: 1h
approve:
  roles: [database]
windows:
  - name: nights
    roles: [database]
    days: [mon, tue, wed, thu, fri]
    start: "01:00"
    duration: 3h
    timezone: Europe/Berlin
    corrective: window
freezes:
  - name: year-end
    start: 2026-12-24T00:00:00+01:00
    end: 2027-01-02T00:00:00+01:00
""")
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # a Monday; 13:00 in Berlin: the window is closed
NIGHT = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # Tuesday 02:00 in Berlin: the window is open
HOST = "web00042.example.net"
SPLAY = splay_offset(POLICY, HOST)
PLAN = plan_digest([("database", "postgresql.conf", "-a\n+b")])


def facts(canary_met: datetime | None = T0, early_met: datetime | None = None, **kw: object) -> RolloutFacts:
    base = RolloutFacts(first_seen_at=T0, waves=(
        WaveFacts("canary", size=5, converged=5 if canary_met else 3, failed=0, criteria_met_at=canary_met),
        WaveFacts("early", size=50, converged=50 if early_met else 10, failed=0, criteria_met_at=early_met),
        WaveFacts("rest", size=445, converged=0, failed=0)))
    return replace(base, **kw)  # type: ignore[arg-type]


def web(wave: str) -> HostView:
    return HostView(HOST, wave, roles=frozenset({"web"}), groups=frozenset({"webservers"}))


def db(wave: str) -> HostView:
    return HostView(HOST, wave, roles=frozenset({"database"}), groups=frozenset())


CASES = [
    # (id, host, new_commit, facts, plan, now, state, reason starts with)
    ("freeze stops corrective drift too", web("rest"), False, facts(),
     None, datetime(2026, 12, 25, tzinfo=UTC), FROZEN, "frozen: year-end until 2027-01-01T23:00:00Z"),
    ("freeze stops a new commit", web("canary"), True, facts(),
     None, datetime(2026, 12, 25, tzinfo=UTC), FROZEN, "frozen: year-end"),
    ("corrective drift needs no collector", web("rest"), False, None, None, T0, ALLOWED, "corrective drift"),
    ("corrective drift waits for a window that says so", db("rest"), False, None, None, T0, WAITING,
     "waiting: window nights opens Tue 2026-12-01 01:00 Europe/Berlin"),
    ("corrective drift inside the window", db("rest"), False, None, None, NIGHT, ALLOWED, "corrective"),
    ("collector down: the first wave goes on", web("canary"), True, None, None, T0 + SPLAY, ALLOWED,
     "wave canary open"),
    ("collector down: the first wave still splays", web("canary"), True, None, None,
     T0 + SPLAY - timedelta(seconds=1), WAITING, "waiting: wave canary opens for this host"),
    ("collector down: later waves hold", web("early"), True, None, None, T0 + timedelta(days=3),
     UNREACHABLE, "waiting: collector unreachable, wave early holds new commits (hold-after-first-wave)"),
    ("halted", web("canary"), True, facts(halted_reason="wave canary: 2 failed, max 1 (collector)"), None,
     T0 + timedelta(hours=5), HALTED, "halted: wave canary: 2 failed, max 1 (collector)"),
    ("previous wave short of its criteria", web("early"), True, facts(canary_met=None), None,
     T0 + timedelta(hours=5), WAITING, "waiting: wave canary 3/5 converged, needs 95%"),
    ("soak of the previous wave", web("early"), True, facts(), None,
     T0 + timedelta(minutes=30) + SPLAY - timedelta(seconds=1), WAITING, "waiting: wave early opens"),
    ("soak and splay over", web("early"), True, facts(), None,
     T0 + timedelta(minutes=30) + SPLAY, ALLOWED, "wave early open"),
    ("two waves back not met", web("rest"), True, facts(canary_met=None), None,
     T0 + timedelta(days=1), WAITING, "waiting: wave canary 3/5"),
    ("the wave before not met", web("rest"), True, facts(), None,
     T0 + timedelta(days=1), WAITING, "waiting: wave early 10/50 converged, needs 100%"),
    ("the last wave opens after its own soak", web("rest"), True, facts(early_met=T0 + timedelta(hours=2)),
     None, T0 + timedelta(hours=3) + SPLAY, ALLOWED, "wave rest open"),
    ("the last wave in its soak", web("rest"), True, facts(early_met=T0 + timedelta(hours=2)),
     None, T0 + timedelta(hours=2, minutes=59), WAITING, "waiting: wave rest opens"),
    ("the collector knows no such wave", web("early"), True, facts(waves=()), None,
     T0 + timedelta(days=1), WAITING, "waiting: the collector knows no wave canary"),
    ("window closed for a new commit", db("canary"), True, facts(approved_plans=frozenset({PLAN})), PLAN,
     T0 + SPLAY, WAITING, "waiting: window nights"),
    ("approved, in the window", db("canary"), True, facts(approved_plans=frozenset({PLAN})), PLAN,
     NIGHT, ALLOWED, "wave canary open"),
    ("not approved", db("canary"), True, facts(), PLAN, NIGHT, WAITING,
     f"waiting: approval of plan {PLAN[:12]}"),
    ("a changed plan needs a new approval", db("canary"), True, facts(approved_plans=frozenset({PLAN})),
     plan_digest([("database", "postgresql.conf", "-a\n+c")]), NIGHT, WAITING, "waiting: approval of plan"),
    ("collector down: no approval can be known", db("canary"), True, None, PLAN, NIGHT, WAITING,
     "waiting: approval of plan"),
]


@pytest.mark.parametrize(("host", "new", "known", "plan", "now", "state", "reason"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gate(host: HostView, new: bool, known: RolloutFacts | None, plan: str | None, now: datetime,
              state: str, reason: str) -> None:
    decision = decide_gate(policy=POLICY, host=host, new_commit=new, facts=known, commit_seen_at=T0,
                           plan=plan, now=now)
    assert (decision.state, decision.allow) == (state, state == ALLOWED)
    assert decision.reason.startswith(reason), decision.reason


def test_hold_all_holds_the_first_wave_too() -> None:
    policy = replace(POLICY, on_collector_unreachable="hold-all")
    decision = decide_gate(policy=policy, host=web("canary"), new_commit=True, facts=None,
                           commit_seen_at=T0, plan=None, now=T0 + timedelta(days=1))
    assert (decision.state, decision.reason) == (UNREACHABLE, "waiting: collector unreachable, wave "
                                                 "canary holds new commits (hold-all)")


def test_the_plan_digest_ignores_order_and_sees_every_byte() -> None:
    a, b = ("db", "t1", "-x\n+y"), ("db", "t2", "")
    assert plan_digest([a, b]) == plan_digest([b, a])
    assert plan_digest([a, b]) != plan_digest([a, ("db", "t2", " ")])
    assert plan_digest([a]) != plan_digest([("db2", "t1", "-x\n+y")])


def berlin(days: tuple[str, ...], start: time, hours: int) -> Window:
    return Window("w", days=days, start=start, duration_s=hours * 3600, timezone="Europe/Berlin",
                  roles=("db",))


@pytest.mark.parametrize(("window", "now", "is_open"), [
    (berlin(("mon",), time(1), 3), datetime(2026, 11, 30, 0, 0, tzinfo=UTC), True),  # 01:00 CET
    (berlin(("mon",), time(1), 3), datetime(2026, 11, 29, 23, 59, tzinfo=UTC), False),
    (berlin(("mon",), time(1), 3), datetime(2026, 11, 30, 3, 0, tzinfo=UTC), False),  # ends 04:00 CET
    (berlin(("mon",), time(1), 3), datetime(2026, 6, 28, 23, 0, tzinfo=UTC), True),  # 01:00 CEST
    (berlin(("mon",), time(1), 3), datetime(2026, 6, 29, 2, 0, tzinfo=UTC), False),  # 04:00 CEST
    (berlin(("fri",), time(23), 3), datetime(2026, 12, 5, 0, 30, tzinfo=UTC), True),  # Sat 01:30, over midnight
    (berlin(("fri",), time(23), 3), datetime(2026, 12, 5, 1, 0, tzinfo=UTC), False),
    (berlin(("sat",), time(23), 3), datetime(2026, 12, 5, 0, 30, tzinfo=UTC), False),
    # 2026-03-29 02:30 does not exist in Berlin (spring forward): the window starts after the gap,
    # at 03:30 CEST (01:30Z), and lasts its full hour.
    (berlin(("sun",), time(2, 30), 1), datetime(2026, 3, 29, 1, 15, tzinfo=UTC), False),
    (berlin(("sun",), time(2, 30), 1), datetime(2026, 3, 29, 1, 45, tzinfo=UTC), True),
    (berlin(("sun",), time(2, 30), 1), datetime(2026, 3, 29, 2, 29, tzinfo=UTC), True),
    # 2026-10-25 02:30 occurs twice (fall back): the first one, 02:30 CEST = 00:30Z.
    (berlin(("sun",), time(2, 30), 1), datetime(2026, 10, 25, 0, 30, tzinfo=UTC), True),
    (berlin(("sun",), time(2, 30), 1), datetime(2026, 10, 25, 1, 30, tzinfo=UTC), False),
    (Window("tokyo", days=("mon",), start=time(9), duration_s=3600, timezone="Asia/Tokyo", roles=("db",)),
     datetime(2026, 11, 30, 0, 30, tzinfo=UTC), True),
])
def test_window_open(window: Window, now: datetime, is_open: bool) -> None:
    assert window_open(window, now) is is_open
