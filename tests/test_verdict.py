"""The verdict of one run from Ansible's own outcome: captured runs (tests/data/events) and small
hand-made ones for the shapes a capture cannot make cheaply."""

from __future__ import annotations

from dataclasses import replace

from agent import drift, events, verdict
from agent.drift import DriftContext
from agent.events import Outcome, ParsedRun, TaskResult
from agent.report import DriftKind, Stats
from tests.test_events import EVENTS, parsed

BOOKS = {"base": "playbooks/base.yml", "web": "playbooks/web.yml", "app": "playbooks/app.yml"}


def judge(case: str, roles: tuple[str, ...], **kw: object) -> verdict.RunVerdict:
    return verdict.judge(parsed(EVENTS / case), host="testhost", roles=roles, playbooks=BOOKS, **kw)  # type: ignore[arg-type]


def task(name: str, outcome: Outcome, role: str = "app", **kw: object) -> TaskResult:
    return TaskResult(role=role, play="p", task=name, module="copy", outcome=outcome, **kw)  # type: ignore[arg-type]


def run(*tasks: TaskResult, recap: Stats | None = None, **kw: object) -> ParsedRun:
    return ParsedRun(tasks=tasks, stats=recap or Stats(), messages=(), recap_seen=recap is not None,
                     **kw)  # type: ignore[arg-type]


def test_a_play_whose_hosts_match_nothing_makes_its_role_an_error() -> None:
    found = judge("no_hosts_matched_check", ("base", "web"))
    assert found.failed == () and found.not_reached == ()
    (message,) = found.idle_roles
    assert message == ("playbooks/web.yml ran no task for host 'testhost': play 'Web server' (hosts: "
                       "webservers) matched no host; a role that runs nothing is never in sync")


def test_a_role_whose_every_task_is_filtered_away_is_an_error() -> None:
    (message,) = judge("tasks_filtered_away_check", ("web",)).idle_roles
    assert message.startswith("playbooks/web.yml ran no task for host 'testhost': its plays target the host")


def test_fact_gathering_alone_is_no_evidence_but_a_skipped_task_is() -> None:
    gathered = replace(task("Gathering Facts", Outcome.OK), module="gather_facts")
    assert verdict.judge(run(gathered, recap=Stats(ok=1), started=("app",)), host="h", roles=("app",),
                         playbooks=BOOKS).idle_roles
    skipped = task("Only on Debian", Outcome.SKIPPED)  # its `when` was false for this host: it was judged
    assert not verdict.judge(run(gathered, skipped, recap=Stats(ok=1, skipped=1)), host="h", roles=("app",),
                             playbooks=BOOKS).idle_roles


def test_a_playbook_that_never_started_is_named() -> None:
    (message,) = verdict.judge(run(recap=Stats()), host="h", roles=("app",), playbooks=BOOKS).idle_roles
    assert "playbooks/app.yml ran no task for host 'h': the playbook did not start" in message


def test_a_rescued_failure_is_no_failure() -> None:
    found = judge("block_rescue_check", ("app",))
    assert found == verdict.RunVerdict()


def test_the_recap_is_the_judge_even_when_a_rescue_was_not_noticed() -> None:
    unnoticed = task("Read", Outcome.FAILED)  # no `rescued` flag, but the recap says rescued
    assert verdict.judge(run(unnoticed, recap=Stats(rescued=1)), host="h", roles=("app",),
                         playbooks=BOOKS).failed == ()


def test_a_run_cut_short_has_no_recap_and_its_failed_tasks_count() -> None:
    broken = task("Read", Outcome.FAILED)
    assert verdict.judge(run(broken), host="h", roles=("app",), playbooks=BOOKS).failed == (broken,)


def test_a_recap_failure_without_a_failed_task_fails_the_host() -> None:
    (found,) = verdict.judge(run(task("A", Outcome.OK), recap=Stats(ok=1, failed=1)), host="h",
                             roles=("app",), playbooks=BOOKS).failed
    assert found.task == verdict.UNATTRIBUTED_TASK and "recap counts 1 failed" in (found.message or "")


def test_a_failed_loop_item_fails_the_host_by_itself() -> None:
    (found,) = judge("loop_item_fails_check", ("app",)).failed
    assert (found.task, found.item) == ("Config fragments", "beta")


def test_a_failure_known_to_happen_only_in_check_mode_is_set_apart() -> None:
    (failed,) = judge("check_mode_fact_check", ("app",)).failed
    assert failed.task == "Remember the release"
    known = judge("check_mode_fact_check", ("app",), check_only_keys=frozenset({failed.key}))
    assert (known.failed, known.check_only) == ((), (failed,))
    (finding,) = drift.check_only_findings(known, BOOKS)
    assert finding.kind is DriftKind.UNVERIFIABLE and finding.reason is not None
    assert finding.reason.startswith("fails only in check mode (the apply of this commit succeeded): Task failed")


def test_roles_a_stopped_check_never_reached_are_unverifiable_not_idle() -> None:
    stop = task("Remember", Outcome.FAILED, role="base")
    found = verdict.judge(run(stop, recap=Stats(failed=1)), host="h", roles=("base", "web"), playbooks=BOOKS,
                          check_only_keys=frozenset({stop.key}))
    assert (found.idle_roles, found.not_reached) == ((), ("web",))
    _, unchecked = drift.check_only_findings(found, BOOKS)
    assert (unchecked.task.role, unchecked.kind) == ("web", DriftKind.UNVERIFIABLE)
    assert unchecked.reason == ("playbooks/web.yml was not checked: the check stopped at 'Remember', which "
                                "fails only in check mode")


def test_changes_no_result_shows_are_never_in_sync() -> None:
    notes_lost = parsed(EVENTS / "blanked_result_check")
    blanked = replace(notes_lost, tasks=tuple(replace(t, outcome=Outcome.OK, message=None)
                                              for t in notes_lost.tasks))
    (change,) = verdict.judge(blanked, host="localhost", roles=("playbook",), playbooks=BOOKS).unattributed
    assert change.outcome is Outcome.CHANGED and "cannot be attributed" in (change.message or "")
    ctx = DriftContext(commit="c1", converged=frozenset({"c1"}), recurring=frozenset())
    (finding,) = drift.classify_tasks([change], ctx)
    assert finding.actionable and finding.kind is DriftKind.CORRECTIVE
    whole = verdict.judge(parsed(EVENTS / "big_loop_check"), host="localhost", roles=("playbook",),
                          playbooks=BOOKS)
    assert whole.unattributed == ()  # six changed items of one task: the recap's one change


def test_a_command_that_runs_in_check_mode_is_unverifiable_not_intentional() -> None:
    command, copy = parsed(EVENTS / "command_check_mode_false_check").tasks
    ctx = DriftContext(commit="c1", converged=frozenset(), recurring=frozenset())
    found = drift.classify_tasks([command, copy], ctx)
    assert [(f.task.task, f.kind) for f in found] == [("Read the year", DriftKind.UNVERIFIABLE),
                                                      ("App config", DriftKind.INTENTIONAL)]
    assert "check_mode: false" in (found[0].reason or "")
    assert drift.recurring_after_apply([command]) == ()



def test_a_handler_that_runs_twice_is_two_changes() -> None:
    handler = {"event": "runner_on_ok", "event_data": {"host": "h", "task_uuid": "u9", "task": "Restart",
                                                       "playbook": "app.yml", "res": {"changed": True}}}
    stats = {"event": "playbook_on_stats", "event_data": {"changed": {"h": 2}, "ok": {"h": 2}}}
    twice = events.parse([handler, handler, stats], host="h")
    assert verdict.judge(twice, host="h", roles=("app",), playbooks=BOOKS).unattributed == ()
