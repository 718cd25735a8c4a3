"""Oversized reports: the agent caps a report below what the collector accepts (its 5 MiB body limit, its
1 MiB limit on one string), trimming diffs first and saying so, so that every report can be delivered
instead of being quarantined for good."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from agent import report_size
from agent.collector.context import DEFAULT_MAX_BODY_BYTES
from agent.collector.payload import PayloadLimits
from agent.report import Diff, DriftItem, DriftKind, ErrorItem, Phase, Report, Status, to_json
from tests.factory import make_report
from tests.faults.conftest import HOST, Agent, Collector, cheap_repo, with_collector


def drifting(files: int, size: int) -> Report:
    items = tuple(DriftItem(play="App", task=f"file {i}", role="app", module="ansible.builtin.copy",
                            kind=DriftKind.CORRECTIVE,
                            diffs=(Diff(f"/etc/app/f{i}.conf", "a" * size, "b" * size),)) for i in range(files))
    return make_report(HOST, status=Status.CORRECTED, drift=items)


def post(collector: Collector, report: Report) -> httpx.Response:
    token = collector.token_file.read_text().strip()
    return httpx.post(f"{collector.url}/api/v1/reports", content=to_json(report).encode(), timeout=60,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def test_45_drifting_70kb_files_fit_and_are_accepted(collector: Collector) -> None:
    report = drifting(45, 70_000)
    assert report_size.size_bytes(report) > DEFAULT_MAX_BODY_BYTES
    assert post(collector, report).status_code == 413  # what reached the collector before
    fitted = report_size.fit(report)
    assert report_size.size_bytes(fitted) <= report_size.MAX_REPORT_BYTES < DEFAULT_MAX_BODY_BYTES
    assert fitted.truncated and all(d.diff_truncated for d in fitted.drift)
    assert len(fitted.drift) == 45 and all(d.diffs for d in fitted.drift)  # every item keeps a diff
    assert any("each diff was cut to" in w for w in fitted.warnings)
    cut = fitted.drift[0].diffs[0].before or ""
    assert cut.startswith("a" * 1000) and "more characters not shown: report size cap" in cut
    assert post(collector, fitted).status_code == 201


def test_a_small_report_is_left_alone() -> None:
    report = drifting(3, 1000)
    assert report_size.fit(report) == report


@pytest.mark.parametrize(("what", "report"), [
    ("one 3 MB diff", drifting(1, 3_000_000)),
    ("a 2 MB error message", make_report(HOST, status=Status.ERROR, errors=(ErrorItem(Phase.APPLY, "e" * 2_000_000),))),
    ("20000 drift items", drifting(20_000, 100)),
    ("4000 errors of 2 kB", make_report(HOST, status=Status.ERROR,
                                        errors=tuple(ErrorItem(Phase.CHECK, "x" * 2000) for _ in range(4000)))),
])
def test_every_shape_of_oversized_report_fits(what: str, report: Report) -> None:
    fitted = report_size.fit(report)
    data = json.loads(to_json(fitted))
    assert len(to_json(fitted).encode()) <= report_size.MAX_REPORT_BYTES, what
    strings = [s for d in data["drift"] for x in d["diffs"] for s in (x["before"], x["after"]) if s]
    strings += [e["message"] for e in data["errors"]]
    assert max(map(len, strings), default=0) <= PayloadLimits().max_string_chars, what
    assert fitted.truncated and fitted.warnings, what


@pytest.mark.parametrize(("what", "report", "field"), [
    ("drift items of mixed sizes and non-ASCII text", make_report(HOST, status=Status.CORRECTED, drift=tuple(
        DriftItem(play="App", task=f"t{i} é€" * (1 + i % 7), role=None, module="ansible.builtin.command",
                  kind=DriftKind.CORRECTIVE) for i in range(3000))), "drift"),
    ("errors of mixed sizes", make_report(HOST, status=Status.ERROR, errors=tuple(
        ErrorItem(Phase.CHECK, "ü" * (50 + 37 * (i % 11))) for i in range(2000))), "errors"),
])
def test_the_longest_prefix_that_fits_is_kept(what: str, report: Report, field: str) -> None:
    """Items are left out from the last one on, and no more than needed: one item more would not fit."""
    cap = report_size.size_bytes(report) // 3
    fitted = report_size.fit(report, cap)
    kept = len(getattr(fitted, field))
    assert 0 < kept < len(getattr(report, field)), what
    assert getattr(fitted, field) == getattr(report, field)[:kept], what
    assert report_size.size_bytes(fitted) <= cap, what
    if field == "drift":  # the warning counts the items left out, so one more item means one fewer left out
        total = len(report.drift)
        warnings = (*fitted.warnings[:-1], f"{total - kept - 1} of {total} drift items were left out")
        one_more = replace(fitted, drift=report.drift[:kept + 1], warnings=warnings)
    else:
        one_more = replace(fitted, errors=report.errors[:kept + 1])
    assert report_size.size_bytes(one_more) > cap, what


@pytest.mark.ansible
def test_a_cycle_with_a_huge_drift_delivers_its_report(agent: Callable[..., Agent], collector: Collector,
                                                       tmp_path: Path) -> None:
    task = """\
    - name: Many big files
      ansible.builtin.copy:
        dest: "{{ target_root }}/f{{ item }}.conf"
        content: "{{ 'n' * 70000 }}"
        mode: "0644"
      loop: "{{ range(45) | list }}"
"""
    repo = cheap_repo(tmp_path / "origin", task)
    a = agent(repo.path, **with_collector(collector))
    root = tmp_path / "root"  # made by write_config
    for i in range(45):
        (root / f"f{i}.conf").write_text("o" * 70000)  # before and after: 140 kB of diff per file
    result = a.run("run", "--json", "--check")
    assert result.returncode == 2, result.stderr
    report = json.loads(result.stdout)
    assert report["truncated"] and any(d["diff_truncated"] for d in report["drift"])
    assert "wait in the outbox" not in result.stderr
    assert a.run("outbox").stdout.strip().endswith("0 waiting, 0 quarantined, 0 compacted")
    assert report["run_id"] in collector.runs()


def test_a_task_whose_result_is_too_big_for_the_events_still_counts_as_changed(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """ansible-runner empties a result over MAX_EVENT_RES characters; the agent's callback notes the change."""
    from types import SimpleNamespace

    from agent.ansible_plugins.callback.gitops_agent import CallbackModule

    notes = tmp_path / "notes.jsonl"
    monkeypatch.setenv("GITOPS_AGENT_NOTES_FILE", str(notes))
    monkeypatch.setenv("MAX_EVENT_RES", "1000")
    task = SimpleNamespace(no_log=False, _uuid="t-1")
    CallbackModule().v2_runner_on_ok(SimpleNamespace(_task=task, _result={"changed": True, "diff": "x" * 2000}))
    assert {"task_uuid": "t-1", "changed": True}.items() <= json.loads(notes.read_text().splitlines()[0]).items()
