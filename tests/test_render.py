"""The text people read: a drift item names its Ansible role, loop item, file and reason."""

from __future__ import annotations

from dataclasses import replace

from agent import render
from agent.report import (
    ApplyResult,
    DriftItem,
    DriftKind,
    Enforcement,
    FailedTask,
    GateState,
    RolloutInfo,
    Status,
)
from tests.factory import make_report

TWIN = DriftItem(play="Web", task="Site config", role="web", module="template", kind=DriftKind.UNVERIFIABLE,
                 reason="fails only in check mode", ansible_role="sites",
                 task_path="roles/sites/tasks/site.yml:1", item="b")


def test_summary_names_role_item_and_reason_and_the_failed_item() -> None:
    report = replace(make_report(status=Status.FAILED, drift=(TWIN,)),
                     apply=ApplyResult(attempted=True, changed=0,
                                       failed_tasks=(FailedTask("Fragments", "not found", item="beta"),)))
    text = render.summary(report)
    assert "unverifiable web / sites : Site config [b]  [template] -" in text
    assert "fails only in check mode" in text
    assert "failed: Fragments [beta]: not found" in text


def test_unified_names_the_file_and_gives_the_reason_instead_of_a_missing_diff() -> None:
    text = render.unified(TWIN)
    assert text.splitlines()[0] == ("--- unverifiable: web / Web / sites : Site config [b] [template] "
                                    "(roles/sites/tasks/site.yml:1)")
    assert "fails only in check mode" in text and "no diff" not in text


def test_summary_says_what_a_held_host_enforced_and_its_drift() -> None:
    converged = "b" * 40
    corrected = replace(TWIN, kind=DriftKind.CORRECTIVE, reason=None, item=None, ansible_role=None)
    info = RolloutInfo(wave="rest", gate=GateState.HALTED, reason="halted: by hand", policy_digest="d" * 64,
                       enforcing_commit=converged, enforced=Enforcement(
                           converged, Status.CORRECTED, "corrected 1 drifted task(s)", drift=(corrected,)))
    report = make_report(status=Status.DRIFTED, drift=(), rollout=replace(info, checked_at=None))
    lines = render.summary(report).splitlines()
    assert "  rollout: wave rest, halted: by hand (enforcing bbbbbbbbbbbb: corrected 1 drifted task(s))" in lines
    assert "    corrective   web / Site config  [template] -" in lines
    nothing = replace(info, enforcing_commit=None, enforced=Enforcement(None, None, "no converged commit yet: "
                                                                         "nothing to enforce"))
    assert render.rollout_text(replace(report, rollout=nothing)) == (
        "rollout: wave rest, halted: by hand (no converged commit yet: nothing to enforce)")
