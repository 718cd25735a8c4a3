from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from agent import report as codec
from agent.errors import ReportError
from agent.report import (
    ApplyResult,
    Diff,
    DriftItem,
    DriftKind,
    FailedTask,
    Mode,
    Phase,
    Report,
    SourceInfo,
    Status,
    Trigger,
)

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def sample() -> Report:
    return Report(
        run_id="6f1c1f0e-8f5b-4b8e-9a43-3f1a3c0b9d11", host="web01", agent_version="0.1.0",
        trigger=Trigger.SCHEDULE, mode=Mode.ENFORCE, started_at=NOW, finished_at=NOW,
        source=SourceInfo(url="file:///r", ref="main", commit="a" * 40),
        phase_reached=Phase.DONE, status=Status.CORRECTED, roles=("base", "web"),
        drift=(DriftItem(play="p", task="t", role="base", module="copy", kind=DriftKind.CORRECTIVE,
                         diffs=(Diff("/etc/motd", "old\n", "new\n"),), first_seen_at=NOW),),
        apply=ApplyResult(attempted=True, changed=1, failed_tasks=(FailedTask("x", "boom"),)),
    )


def test_round_trip_is_lossless() -> None:
    original = sample()
    assert codec.from_json(codec.to_json(original)) == original


def test_the_rollout_block_round_trips_and_is_optional() -> None:
    gated = dataclasses.replace(sample(), rollout=codec.RolloutInfo(
        wave="canary", gate=codec.GateState.HALTED, reason="halted: wave canary: 2 of 5 failed",
        policy_digest="d" * 64, wave_sizes=(codec.WaveSize("canary", 5),)))
    assert codec.from_json(codec.to_json(gated)) == gated
    data = codec.to_dict(gated)
    assert data["rollout"]["gate"] == "halted" and data["rollout"]["wave_sizes"] == [{"name": "canary",
                                                                                      "size": 5}]
    del data["rollout"]
    assert codec.from_dict(data).rollout is None  # reports of agents without rollouts still decode


def test_times_are_rfc3339_utc() -> None:
    data = codec.to_dict(sample())
    assert data["started_at"] == "2026-11-26T12:00:00.000Z"
    assert data["drift"][0]["first_seen_at"].endswith("Z")


def test_unknown_fields_are_tolerated() -> None:
    data = codec.to_dict(sample())
    data["future_field"] = {"x": 1}
    data["drift"][0]["extra"] = "ignored"
    assert codec.from_dict(data).drift[0].task == "t"


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(schema_version=2), "schema_version: 2 is not supported"),
    (lambda d: d.pop("host"), "host: required field is missing"),
    (lambda d: d["drift"][0].update(kind="weird"), "drift[0].kind: 'weird' is not one of"),
    (lambda d: d.update(started_at="yesterday"), "started_at: 'yesterday' is not an RFC 3339 time"),
    (lambda d: d.update(started_at="2026-11-26T12:00:00"), "started_at:"),
    (lambda d: d["stats"].update(ok="3"), "stats.ok: expected int, got str"),
    (lambda d: d["stats"].update(ok=True), "stats.ok: expected int, got bool"),
    (lambda d: d.update(roles="base"), "roles: expected a list"),
    (lambda d: d.update(source=None), "source: must not be null"),
])
def test_bad_reports_name_the_field(mutate, message: str) -> None:
    data = codec.to_dict(sample())
    mutate(data)
    with pytest.raises(ReportError, match=message.replace("[", r"\[").replace("]", r"\]")):
        codec.from_dict(data)


def test_invalid_json_is_a_report_error() -> None:
    with pytest.raises(ReportError, match="invalid JSON"):
        codec.from_json("{nope")
    with pytest.raises(ReportError, match="expected a JSON object"):
        codec.from_json(json.dumps([1]))


@pytest.mark.parametrize(("status", "code"), [
    (Status.IN_SYNC, 0), (Status.CORRECTED, 0), (Status.DRIFTED, 2), (Status.PAUSED, 2),
    (Status.FAILED, 1), (Status.ERROR, 1),
])
def test_exit_codes(status: Status, code: int) -> None:
    assert codec.exit_code(status) == code
