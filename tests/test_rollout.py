"""agent.rollout: rollout.yml validation, wave assignment by stable hash, criteria and splay."""

from __future__ import annotations

import re
from datetime import timedelta
from itertools import pairwise

import pytest

from agent.errors import PlanError, RolloutError
from agent.rollout import (
    Criteria,
    Policy,
    Share,
    Wave,
    assign_waves,
    criteria_failed,
    criteria_met,
    parse_policy,
    splay_offset,
    wave_sizes,
)
from tests.conftest import ROOT

BASE = """\
version: 1
waves:
  - name: canary
    share: 2%
  - name: rest
"""


def hosts(n: int, prefix: str = "web") -> dict[str, frozenset[str]]:
    return {f"{prefix}{i:05d}.example.net": frozenset() for i in range(n)}


def test_the_example_of_the_docs_parses() -> None:
    text = (ROOT / "docs" / "rollout.md").read_text()
    example = re.search(r"```yaml\n(# rollout.yml.*?)```", text, re.S)
    assert example is not None
    policy = parse_policy(example[1])
    assert [w.name for w in policy.waves] == ["canary", "early", "main", "rest"]
    assert policy.waves[1].share == Share(percent=2.0)
    assert policy.waves[1].soak_s == 1800
    assert policy.waves[1].criteria == Criteria(converged=Share(percent=95.0), max_failed=Share(count=1))
    assert policy.waves[2].criteria.max_failed == Share(percent=2.0)
    assert policy.splay_s == 600
    assert policy.approve_roles == ("database",)
    (window,) = policy.windows
    assert (window.timezone, window.duration_s, window.corrective_anytime) == ("Europe/Berlin", 10800, True)
    (freeze,) = policy.freezes
    assert freeze.end_at > freeze.start_at


def test_defaults_are_the_safe_ones() -> None:
    policy = parse_policy(BASE)
    assert policy.on_collector_unreachable == "hold-after-first-wave"
    assert policy.waves[1].criteria == Criteria(converged=Share(percent=100.0), max_failed=Share(count=0))
    assert (policy.splay_s, policy.windows, policy.freezes, policy.approve_roles) == (0, (), (), ())


WAVES = "version: 1\nwaves:\n"
WINDOW = ("version: 1\nwaves: [{name: all}]\nwindows:\n  - {name: n, roles: [db], days: [mon], "
          "start: '01:00', duration: 2h, timezone: Europe/Berlin, %s}\n")


@pytest.mark.parametrize(("text", "key", "says"), [
    ("version: 1\nwaves: [{name: a}]\nsplay: 10\n", "splay", "duration like"),
    ("version: 2\nwaves: [{name: a}]\n", "version", "must be 1"),
    ("waves: [{name: a}]\n", "version", "must be 1"),
    ("version: 1\nwaves: []\n", "waves", "at least one"),
    ("version: 1\nwaves: {a: 1}\n", "waves", "must be a list"),
    ("version: 1\nwave: [{name: a}]\n", "wave", "unknown key"),
    (WAVES + "  - {name: a, share: 5%}\n  - {name: b, shares: 1%}\n", "waves[1].shares", "unknown key"),
    (WAVES + "  - {name: a, share: 125%}\n  - {name: b}\n", "waves[0].share", "percentage"),
    (WAVES + "  - {name: a, share: 5}\n  - {name: b}\n", "waves[0].share", "percentage"),
    (WAVES + "  - {name: Canary, share: 5%}\n  - {name: b}\n", "waves[0].name", "must be a name"),
    (WAVES + "  - {share: 5%}\n  - {name: b}\n", "waves[0].name", "must be a name"),
    (WAVES + "  - {name: a, share: 5%}\n  - {name: a}\n", "waves[1].name", "earlier wave"),
    (WAVES + "  - {name: a}\n  - {name: b}\n", "waves[0]", "only the last wave"),
    (WAVES + "  - {name: a, share: 5%}\n", "waves[0]", "the last wave must have neither"),
    (WAVES + "  - {name: a, share: 60%}\n  - {name: b, share: 50%}\n  - {name: c}\n", "waves",
     "110%"),
    (WAVES + "  - {name: a, share: 5%, soak: 1h}\n  - {name: b}\n", "waves[0]", "first wave"),
    (WAVES + "  - {name: a, share: 5%}\n  - {name: b, soak: 1 hour}\n", "waves[1].soak", "duration"),
    (WAVES + "  - {name: a, groups: canary}\n  - {name: b}\n", "waves[0].groups", "must be a list"),
    (WAVES + "  - {name: a, share: 5%}\n  - {name: b, criteria: {converged: 95}}\n",
     "waves[1].criteria.converged", "percentage"),
    (WAVES + "  - {name: a, share: 5%}\n  - {name: b, criteria: {max_failed: -1}}\n",
     "waves[1].criteria.max_failed", "host count or a percentage"),
    (WAVES + "  - {name: a, share: 5%}\n  - {name: b, criteria: {failed: 1}}\n",
     "waves[1].criteria.failed", "unknown key"),
    ("version: 1\nwaves: [{name: a}]\non_collector_unreachable: proceed\n", "on_collector_unreachable",
     "hold-after-first-wave, hold-all"),
    ("version: 1\nwaves: [{name: a}]\napprove: {roles: db}\n", "approve.roles", "must be a list"),
    (WINDOW % "corrective: never", "windows[0].corrective", "anytime or window"),
    (WINDOW % "days: [monday]", "windows[0].days", "'monday' is not one of"),
    (WINDOW % "start: '25:00'", "windows[0].start", "HH:MM"),
    (WINDOW % "timezone: Mars/Olympus", "windows[0].timezone", "unknown time zone"),
    (WINDOW % "duration: 8d", "windows[0].duration", "at most 7d"),
    (WINDOW % "roles: []", "windows[0]", "names no roles and no groups"),
    ("version: 1\nwaves: [{name: a}]\nwindows: [{name: n, roles: [db]}]\n", "windows[0].days", "required"),
    ("version: 1\nwaves: [{name: a}]\nfreezes: [{name: f, start: 2026-12-01, end: 2026-12-02}]\n",
     "freezes[0].start", "ISO 8601"),
    ("version: 1\nwaves: [{name: a}]\nfreezes: [{name: f, start: '2026-12-01T00:00', "
     "end: '2026-12-02T00:00+00:00'}]\n", "freezes[0].start", "needs an offset"),
    ("version: 1\nwaves: [{name: a}]\nfreezes: [{name: f, start: '2026-12-02T00:00Z', "
     "end: '2026-12-01T00:00Z'}]\n", "freezes[0].end", "after start"),
    ("- just\n- a list\n", "", "must be a mapping"),
    ("version: 1\nwaves: [{name: a}\n", "", "not valid YAML"),
])
def test_a_bad_policy_is_one_line_naming_the_key(text: str, key: str, says: str) -> None:
    with pytest.raises(RolloutError) as caught:
        parse_policy(text)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"rollout.yml: {key}: " if key else "rollout.yml: ")
    assert says in message
    assert isinstance(caught.value, PlanError)  # a failed plan: nothing is applied


def three_waves(*shares: float) -> Policy:
    waves = [Wave(f"w{i}", share=Share(percent=s)) for i, s in enumerate(shares)]
    return Policy(waves=(*waves, Wave("rest")))


@pytest.mark.parametrize("n", [1, 7, 50, 333, 1000, 5000])
def test_each_share_is_within_one_host_of_what_was_asked(n: int) -> None:
    policy = three_waves(2, 25, 10)
    sizes = wave_sizes(policy, assign_waves(policy, hosts(n)))
    for name, percent in (("w0", 2), ("w1", 25), ("w2", 10)):
        assert abs(sizes[name] - percent * n / 100) <= 1, (name, sizes)
    assert sum(sizes.values()) == n


def test_a_two_percent_canary_of_fifty_hosts_is_one_host_never_none() -> None:
    policy = three_waves(2)
    for prefix in ("web", "db", "cache", "lb"):
        assert wave_sizes(policy, assign_waves(policy, hosts(50, prefix)))["w0"] == 1


def test_waves_depend_on_names_not_on_the_order_of_the_inventory() -> None:
    policy = three_waves(2, 25)
    fleet = hosts(2000)
    backwards = dict(reversed(list(fleet.items())))
    assert assign_waves(policy, fleet) == assign_waves(policy, backwards)


def test_the_hash_order_mixes_similar_names() -> None:
    """Consecutive names (web00001, web00002, ...) do not land in one wave together."""
    policy = three_waves(10)
    chosen = sorted(int(h[3:8]) for h, w in assign_waves(policy, hosts(1000)).items() if w == "w0")
    assert len(chosen) == 100
    assert max(chosen) - min(chosen) > 800  # spread over the whole list, not a block
    assert sum(1 for a, b in pairwise(chosen) if b == a + 1) < 30


def test_adding_or_removing_a_host_moves_at_most_one_other_host_per_boundary() -> None:
    policy = three_waves(2, 25, 10)
    fleet = hosts(3000)
    before = assign_waves(policy, fleet)
    boundaries = len(policy.waves) - 1
    for i in range(40):
        grown = assign_waves(policy, {**fleet, f"new{i}.example.net": frozenset()})
        moved = [h for h in fleet if grown[h] != before[h]]
        assert len(moved) <= boundaries
        gone = f"web{i * 71:05d}.example.net"
        shrunk = assign_waves(policy, {h: g for h, g in fleet.items() if h != gone})
        assert len([h for h in shrunk if shrunk[h] != before[h]]) <= boundaries


def test_groups_come_first_and_a_share_of_a_group_is_of_that_group() -> None:
    fleet = hosts(200)
    canaries = {"web00003.example.net", "web00150.example.net"}
    dbs = {f"db{i}" for i in range(40)}
    fleet |= {h: frozenset({"canary"}) for h in canaries}
    fleet |= {h: frozenset({"database"}) for h in dbs}
    policy = Policy(waves=(Wave("canary", groups=("canary",)),
                           Wave("db-first", groups=("database",), share=Share(percent=10.0)),
                           Wave("fleet", share=Share(percent=10.0)), Wave("rest")))
    waves = assign_waves(policy, fleet)
    assert {h for h, w in waves.items() if w == "canary"} == canaries
    first_dbs = {h for h, w in waves.items() if w == "db-first"}
    assert len(first_dbs) == 4 and first_dbs <= dbs
    assert wave_sizes(policy, waves) == {"canary": 2, "db-first": 4, "fleet": 24, "rest": 210}


def test_an_empty_wave_is_reported_with_size_zero() -> None:
    policy = Policy(waves=(Wave("canary", groups=("canary",)), Wave("rest")))
    assert wave_sizes(policy, assign_waves(policy, hosts(5))) == {"canary": 0, "rest": 5}


@pytest.mark.parametrize(("criteria", "size", "converged", "failed", "met", "halt"), [
    (Criteria(), 5, 5, 0, True, False),
    (Criteria(), 5, 4, 0, False, False),
    (Criteria(), 5, 4, 1, False, True),
    (Criteria(Share(percent=95.0), Share(count=1)), 20, 19, 1, True, False),
    (Criteria(Share(percent=95.0), Share(count=1)), 20, 18, 1, False, False),
    (Criteria(Share(percent=95.0), Share(count=1)), 20, 18, 2, False, True),
    (Criteria(Share(percent=95.0), Share(percent=2.0)), 100, 97, 2, True, False),
    (Criteria(Share(percent=95.0), Share(percent=2.0)), 100, 97, 3, False, True),
    (Criteria(Share(percent=95.0), Share(percent=2.0)), 49, 49, 1, False, True),  # 2% of 49 is 0
    (Criteria(), 0, 0, 0, True, False),  # an empty wave has nothing to wait for
])
def test_criteria(criteria: Criteria, size: int, converged: int, failed: int, met: bool,
                  halt: bool) -> None:
    assert criteria_met(criteria, size=size, converged=converged, failed=failed) is met
    assert criteria_failed(criteria, size=size, failed=failed) is halt


def test_splay_is_fixed_per_host_and_spread_over_the_whole_splay() -> None:
    policy = Policy(waves=(Wave("all"),), splay_s=600)
    offsets = [splay_offset(policy, h) for h in hosts(5000)]
    assert all(timedelta(0) <= o < timedelta(seconds=600) for o in offsets)
    per_minute = [sum(1 for o in offsets if m * 60 <= o.total_seconds() < (m + 1) * 60) for m in range(10)]
    assert min(per_minute) > 400 and max(per_minute) < 600, per_minute  # 500 expected in each
    assert splay_offset(policy, "web00001.example.net") == offsets[1]
    assert splay_offset(Policy(waves=(Wave("all"),)), "web00001.example.net") == timedelta(0)


def test_the_digest_is_stable_and_changes_with_the_policy() -> None:
    assert parse_policy(BASE).digest() == parse_policy(BASE + "\n# a comment\n").digest()
    assert parse_policy(BASE).digest() != parse_policy(BASE.replace("2%", "3%")).digest()
