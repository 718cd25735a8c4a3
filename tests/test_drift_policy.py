from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent import drift, policy
from agent.drift import DriftContext
from agent.events import Outcome, TaskResult
from agent.report import DriftKind, Pause

NOW = datetime(2026, 11, 26, tzinfo=UTC)


def task(name: str, outcome: Outcome = Outcome.CHANGED, **kw: object) -> TaskResult:
    return TaskResult(role="base", play="p", task=name, module="copy", outcome=outcome, **kw)  # type: ignore[arg-type]


def ctx(commit: str = "c2", converged: tuple[str, ...] = (), recurring: tuple[str, ...] = ()) -> DriftContext:
    return DriftContext(commit=commit, converged=frozenset(converged), recurring=frozenset(recurring))


def test_new_commit_is_intentional_and_known_commit_is_corrective() -> None:
    tasks = [task("a"), task("b", Outcome.OK)]
    assert [f.kind for f in drift.classify_tasks(tasks, ctx(converged=("c1",)))] == [DriftKind.INTENTIONAL]
    assert [f.kind for f in drift.classify_tasks(tasks, ctx(converged=("c1", "c2")))] == [DriftKind.CORRECTIVE]


def test_recurring_and_unverifiable() -> None:
    tasks = [task("a"), task("cmd", Outcome.SKIPPED, check_mode_skip=True), task("when", Outcome.SKIPPED)]
    found = drift.classify_tasks(tasks, ctx(converged=("c2",), recurring=(tasks[0].key,)))
    assert [(f.task.task, f.kind) for f in found] == [("a", DriftKind.RECURRING),
                                                      ("cmd", DriftKind.UNVERIFIABLE)]
    assert not any(f.actionable for f in found)


def test_failures_ignore_ignored() -> None:
    tasks = [task("x", Outcome.FAILED), task("y", Outcome.FAILED, ignored=True), task("z", Outcome.UNREACHABLE)]
    assert [t.task for t in drift.failures(tasks)] == ["x", "z"]


def test_recurring_after_apply() -> None:
    assert [f.kind for f in drift.recurring_after_apply([task("a"), task("b", Outcome.OK)])] == [
        DriftKind.RECURRING]


def decide(**kw: object) -> policy.Decision:
    args: dict[str, object] = {"actionable_drift": 1, "check_failures": 0, "mode": "enforce",
                               "check_only": False, "pause": None, "now": NOW}
    args.update(kw)
    return policy.decide(**args)  # type: ignore[arg-type]


def test_policy() -> None:
    assert decide().apply
    assert not decide(actionable_drift=0).apply
    assert decide(actionable_drift=0, check_failures=2).apply  # the real run is the judge
    assert decide(mode="detect").reason == "mode is detect"
    assert not decide(check_only=True).apply
    paused = Pause(reason="db migration", until=NOW + timedelta(hours=1))
    assert decide(pause=paused).reason == "paused: db migration"
    expired = Pause(reason="old", until=NOW - timedelta(seconds=1))
    assert decide(pause=expired).apply


def test_with_recheck_marks_what_changed_again_recurring_and_what_was_blind_unverifiable() -> None:
    a, b, c, d = task("a"), task("b"), task("c"), task("d")
    check = (drift.Finding(a, DriftKind.INTENTIONAL), drift.Finding(b, DriftKind.INTENTIONAL, "why"),
             drift.Finding(c, DriftKind.CORRECTIVE))
    recurring = (drift.Finding(b, DriftKind.RECURRING), drift.Finding(d, DriftKind.RECURRING))
    blind = (drift.Finding(c, DriftKind.UNVERIFIABLE, "check only"),)
    merged = drift.with_recheck(check, recurring, blind)
    assert [(f.task.task, f.kind, f.reason) for f in merged] == [
        ("a", DriftKind.INTENTIONAL, None), ("b", DriftKind.RECURRING, "why"),  # the check's reason kept
        ("d", DriftKind.RECURRING, None), ("c", DriftKind.UNVERIFIABLE, "check only")]
    assert drift.with_recheck(check, (), ()) == check


def test_after_apply_remembers_recurring_and_check_only_for_converged_commits() -> None:
    from agent.state import MAX_CONVERGED, AgentState

    state = AgentState(last_commit="c3", applied_commit="c1", converged=("c1", "c2"),
                       recurring={"c1": ("k1",), "gone": ("k0",)}, check_only={"c2": ("x",), "gone": ("y",)})
    after = state.after_apply("c3", recurring={"k2", "k1"}, check_only=set())
    assert (after.applied_commit, after.converged) == ("c3", ("c1", "c2", "c3"))
    assert after.recurring == {"c1": ("k1",), "c3": ("k1", "k2")}  # sorted; forgotten commits dropped
    assert after.check_only == {"c2": ("x",)}  # no check-only keys for c3: no entry
    again = after.after_apply("c2", recurring=set(), check_only={"z"})
    assert again.converged == ("c1", "c3", "c2") and again.recurring["c2"] == ()
    assert again.check_only == {"c2": ("z",)}
    many = AgentState(converged=tuple(f"c{i}" for i in range(MAX_CONVERGED)))
    assert many.after_apply("new", recurring=set(), check_only=set()).converged[-1] == "new"
    assert len(many.after_apply("new", recurring=set(), check_only=set()).converged) == MAX_CONVERGED
