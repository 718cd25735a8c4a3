"""Data-driven: each folder under data/events holds real runner events and the expected parse.
Add a case with `python tests/data/events/capture.py CASE PLAYBOOK [--check]`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent import events
from agent.report import Diff

CASES = sorted(p for p in (Path(__file__).parent / "data" / "events").iterdir() if p.is_dir())


def as_json(parsed: events.ParsedRun) -> dict[str, Any]:
    def task(t: events.TaskResult) -> dict[str, Any]:
        return {"role": t.role, "play": t.play, "task": t.task, "module": t.module,
                "outcome": t.outcome.value, "no_log": t.no_log, "ignored": t.ignored,
                "check_mode_skip": t.check_mode_skip, "message": t.message,
                "ansible_role": t.ansible_role, "task_path": t.task_path, "item": t.item,
                "rescued": t.rescued, "real_in_check": t.real_in_check,
                "diffs": [[d.path, d.before, d.after] for d in t.diffs]}

    return {"tasks": [task(t) for t in parsed.tasks], "stats": parsed.stats.__dict__,
            "messages": list(parsed.messages), "recap_seen": parsed.recap_seen,
            "started": list(parsed.started),
            "no_hosts": [[p.role, p.play, p.pattern] for p in parsed.no_hosts]}


def parsed(case: Path) -> events.ParsedRun:
    """The case's events parsed as agent.runner parses them (meta.json: its host and project dir)."""
    meta = json.loads((case / "meta.json").read_text()) if (case / "meta.json").exists() else {}
    raw = json.loads((case / "events.json").read_text())
    notes = json.loads((case / "notes.json").read_text())
    return events.parse(raw, host=meta.get("host", "localhost"), notes=notes,
                        project_dir=meta.get("project_dir"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Path) -> None:
    expected = json.loads((case / "expected.json").read_text())
    assert as_json(parsed(case)) == expected


def test_cases_exist() -> None:
    assert {"check_mixed", "apply_mixed", "apply_failing"} <= {c.name for c in CASES}


def test_no_log_secret_never_parsed() -> None:
    raw = json.loads((Path(__file__).parent / "data/events/check_mixed/events.json").read_text())
    notes = json.loads((Path(__file__).parent / "data/events/check_mixed/notes.json").read_text())
    secret = next(t for t in events.parse(raw, host="localhost", notes=notes).tasks if t.task == "Secret token")
    assert secret.no_log and secret.outcome is events.Outcome.CHANGED
    assert secret.diffs == (Diff("Secret token", events.REDACTED, events.REDACTED),)


@pytest.mark.parametrize(("raw", "expected"), [
    ({"prepared": "+ nginx 1.22"}, [Diff("/x", None, "+ nginx 1.22")]),
    ({"before": {"path": "/d", "state": "absent"}, "after": {"path": "/d", "state": "directory"}},
     [Diff("/x", 'path: "/d"\nstate: "absent"\n', 'path: "/d"\nstate: "directory"\n')]),
    ([{"before": "a\n", "after": "b\n", "before_header": "/etc/f", "after_header": "/tmp/src.j2"}],
     [Diff("/x", "a\n", "b\n")]),
    ({"before": "same", "after": "same"}, []),
    (None, []),
])
def test_diff_shapes(raw: Any, expected: list[Diff]) -> None:
    assert list(events.normalise_diffs(raw, "task", target="/x")) == expected


def test_diff_path_from_headers_without_target() -> None:
    raw = {"before": "", "after": "X=1\n", "before_header": "/e (content)", "after_header": "/e (content)"}
    assert events.normalise_diffs(raw, "task") == (Diff("/e", "", "X=1\n"),)


def test_huge_diffs_are_bounded() -> None:
    (diff,) = events.normalise_diffs({"before": "", "after": "x" * 200_000}, "t", target="/big")
    assert diff.after is not None and len(diff.after) < 70_000 and "more characters not kept" in diff.after


def test_module_names_are_shortened() -> None:
    assert events.short_module("ansible.builtin.copy") == "copy"
    assert events.short_module("ansible.legacy.command") == "command"
    assert events.short_module("community.general.ini_file") == "community.general.ini_file"
