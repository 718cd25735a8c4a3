"""The shipped JSON Schema is generated from agent.report and every report the agent writes validates."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest

from agent import report_schema
from agent.report import (
    ApplyResult,
    DriftKind,
    Enforcement,
    GateState,
    Pause,
    RolloutInfo,
    Status,
    WaveSize,
    from_dict,
    to_dict,
)
from tests.factory import BASE_TIME, drift_item, make_report


@pytest.fixture(scope="module")
def schema():
    return json.loads((resources.files("agent") / "schema" / "report-v1.json").read_text())


def test_shipped_schema_is_the_generated_one(schema):
    assert schema == report_schema.build(), (
        "agent/schema/report-v1.json is out of date: "
        "python -m agent.report_schema > agent/schema/report-v1.json")
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("report", [
    make_report(),
    make_report(status=Status.DRIFTED, drift=(drift_item(kind=DriftKind.INTENTIONAL, diffs=3),)),
    make_report(status=Status.FAILED),
    make_report(status=Status.ERROR, commit=None, apply=None),
    make_report(status=Status.PAUSED, pause=Pause(reason="maintenance", until=BASE_TIME)),
    make_report(compacted=12, interval_s=None, splay_s=None),
    make_report(rollout=RolloutInfo(wave="early", gate=GateState.WAITING, policy_digest="d" * 64,
                                    reason="waiting: wave canary 3/5 converged, needs 95%",
                                    wave_sizes=(WaveSize("canary", 5), WaveSize("early", 50)),
                                    plan_digest="p" * 64, enforcing_commit="b" * 40)),
    make_report(status=Status.DRIFTED, rollout=RolloutInfo(
        wave="rest", gate=GateState.HALTED, policy_digest="d" * 64, reason="halted: by hand",
        enforcing_commit="b" * 40, checked_at=BASE_TIME, enforced=Enforcement(
            "b" * 40, Status.CORRECTED, "corrected 1 drifted task(s)",
            drift=(drift_item(kind=DriftKind.CORRECTIVE),), apply=ApplyResult(attempted=True, changed=1)))),
    make_report(status=Status.DRIFTED, rollout=RolloutInfo(
        wave="rest", gate=GateState.UNREACHABLE, policy_digest="d" * 64, reason="waiting: collector down",
        enforced=Enforcement(None, None, "no converged commit yet: nothing to enforce"))),
], ids=["in_sync", "drifted", "failed", "error-before-ansible", "paused", "extensions", "rollout",
        "rollout-enforced", "rollout-nothing-to-enforce"])
def test_reports_written_by_the_agent_validate(schema, report):
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    validator.validate(to_dict(report))
    assert from_dict(to_dict(report)) == report  # the collector decodes it with the same codec


@pytest.mark.parametrize(("mutate", "path"), [
    (lambda d: d.update(schema_version=2), "schema_version"),
    (lambda d: d.pop("host"), ""),
    (lambda d: d["drift"][0].update(kind="sideways"), "drift/0/kind"),
    (lambda d: d["stats"].update(ok="many"), "stats/ok"),
])
def test_invalid_reports_are_refused(schema, mutate, path):
    data = to_dict(make_report(status=Status.DRIFTED))
    mutate(data)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(data))
    assert errors and "/".join(str(p) for p in errors[0].absolute_path) == path


def test_unknown_extra_fields_are_allowed(schema):
    jsonschema.validate({**to_dict(make_report()), "new_field": 1}, schema)
