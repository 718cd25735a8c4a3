"""Data-driven: each folder under data/events holds real runner events and the expected parse.
Add a case with `python tests/data/events/capture.py CASE PLAYBOOK [--check]`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent import events, result_text
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
    assert list(result_text.normalise_diffs(raw, "task", target="/x")) == expected


def test_diff_path_from_headers_without_target() -> None:
    raw = {"before": "", "after": "X=1\n", "before_header": "/e (content)", "after_header": "/e (content)"}
    assert result_text.normalise_diffs(raw, "task") == (Diff("/e", "", "X=1\n"),)


def test_huge_diffs_are_bounded() -> None:
    (diff,) = result_text.normalise_diffs({"before": "", "after": "x" * 200_000}, "t", target="/big")
    assert diff.after is not None and len(diff.after) < 70_000 and "more characters not kept" in diff.after


def test_module_names_are_shortened() -> None:
    assert events.short_module("ansible.builtin.copy") == "copy"
    assert events.short_module("ansible.legacy.command") == "command"
    assert events.short_module("community.general.ini_file") == "community.general.ini_file"


EVENTS = Path(__file__).parent / "data" / "events"


def results(case: str) -> list[events.TaskResult]:
    return list(parsed(EVENTS / case).tasks)


def test_no_hosts_matched_is_seen_per_playbook() -> None:
    run = parsed(EVENTS / "no_hosts_matched_check")
    assert run.started == ("base", "web") and run.recap_seen
    assert run.no_hosts == (events.NoHostsPlay(role="web", play="Web server", pattern="webservers"),)
    assert [t.role for t in run.tasks] == ["base"]


def test_rescued_failure_is_marked_and_counted_by_the_recap() -> None:
    run = parsed(EVENTS / "block_rescue_check")
    failed = [t for t in run.tasks if t.outcome is events.Outcome.FAILED]
    assert [(t.task, t.rescued) for t in failed] == [("Read the site's own config", True)]
    assert (run.stats.failed, run.stats.rescued) == (0, 1)


def test_twins_of_a_looped_include_have_their_own_identity() -> None:
    twins = [t for t in results("include_loop_twins_check") if t.task == "Site config"]
    assert [(t.item, t.ansible_role, t.task_path) for t in twins] == [
        ("a", "sites", "roles/sites/tasks/site.yml:1"), ("b", "sites", "roles/sites/tasks/site.yml:1")]
    assert twins[0].key != twins[1].key
    assert [d.path for t in twins for d in t.diffs] == ["/TMP/root/site-a.conf", "/TMP/root/site-b.conf"]


def test_items_of_a_looped_task_have_their_own_identity() -> None:
    folders = [t for t in results("check_mixed") if t.task == "Several folders"]
    assert [(t.item, t.outcome) for t in folders] == [("a", events.Outcome.CHANGED),
                                                     ("b", events.Outcome.CHANGED)]
    assert len({t.key for t in folders}) == 2 and folders[0].label == "Several folders [a]"


def test_a_template_that_creates_a_file_names_its_destination() -> None:
    (task,) = results("template_new_file_check")
    assert task.diffs == (Diff("/TMP/root/app.conf", "", "port = 8080\n"),)


def test_a_failed_loop_item_is_named_with_its_own_message() -> None:
    found = [(t.item, t.outcome.value) for t in results("loop_item_fails_check")]
    assert found == [("alpha", "changed"), ("beta", "failed"), ("gamma", "changed")]
    beta = results("loop_item_fails_check")[1]
    assert beta.message is not None and "Could not find or access 'files/beta.conf'" in beta.message
    assert "One or more items failed" not in beta.message and "\n" not in beta.message


def test_mitogen_bootstrap_is_dropped_from_the_message() -> None:
    (task,) = results("mitogen_become_check")
    assert task.message is not None and "No such file or directory: 'sudo'" in task.message
    assert "[bootstrap code]" in task.message and "characters of encoded data" in task.message
    assert "\n" not in task.message and len(task.message) < 500


def test_a_command_that_runs_in_check_mode_is_marked() -> None:
    command, copy = results("command_check_mode_false_check")
    assert (command.module, command.outcome, command.real_in_check) == ("command", events.Outcome.CHANGED, True)
    assert not copy.real_in_check


def test_a_loop_over_the_event_limit_is_read_from_its_item_events() -> None:
    raw = json.loads((EVENTS / "big_loop_check/events.json").read_text())
    final = next(e for e in raw if e["event"] == "runner_on_ok")
    assert final["event_data"]["res"] == {}  # ansible-runner blanked the whole result
    found = results("big_loop_check")
    assert [t.item for t in found] == [str(n) for n in range(6)]
    assert all(t.outcome is events.Outcome.CHANGED and len(t.diffs) == 1 for t in found)


def test_a_blanked_result_still_changes_by_the_callbacks_note() -> None:
    (task,) = results("blanked_result_check")
    assert task.outcome is events.Outcome.CHANGED and task.diffs == ()
    assert task.message is not None and "event limit" in task.message


def item_event(n: int, changed: bool = True) -> dict[str, Any]:
    return {"event": "runner_item_on_ok", "event_data": {
        "host": "h", "task_uuid": "u1", "res": {"changed": changed, "item": n, "ansible_loop_var": "item"}}}


def test_items_kept_one_by_one_are_bounded() -> None:
    many = [item_event(n) for n in range(events.MAX_ITEMS_KEPT + 50)] + [item_event(999, changed=False)]
    final = {"event": "runner_on_ok", "event_data": {"host": "h", "task_uuid": "u1", "task": "Dirs",
                                                      "resolved_action": "ansible.builtin.file", "res": {}}}
    found = events.parse([*many, final], host="h").tasks
    assert len(found) == events.MAX_ITEMS_KEPT + 2
    rest = found[-1]
    assert rest.item == "more items" and rest.message is not None
    assert rest.message.startswith("50 more items changed") and "(the first: 100)" in rest.message


def test_messages_are_one_bounded_line() -> None:
    assert result_text.clean_message("\x1b[31mfirst\n\n  second  \n") == "first | second"
    long = result_text.clean_message("x " * 2000)
    assert len(long) == result_text.MAX_MESSAGE_CHARS and long.endswith("…")
    blob = "A" * 300
    assert result_text.clean_message(f"failed: {blob} end") == "failed: [300 characters of encoded data] end"


def test_a_commands_stderr_joins_its_message() -> None:
    event = {"event": "runner_on_failed", "event_data": {
        "host": "h", "task": "Migrate", "resolved_action": "ansible.builtin.command",
        "res": {"msg": "non-zero return code", "rc": 2, "stderr": "ls: cannot access '/x'\n"}}}
    (task,) = events.parse([event], host="h").tasks
    assert task.message == "non-zero return code: ls: cannot access '/x'"


def test_other_hosts_results_are_not_this_hosts() -> None:
    event = {"event": "runner_on_ok", "event_data": {"host": "other", "task": "T", "res": {"changed": True}}}
    assert events.parse([event], host="h").tasks == ()
