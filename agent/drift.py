"""Pure: task results of a check run -> drift findings with their kind.

- unverifiable: check mode could not tell: a command/shell-like task that check mode skips, one that
  runs even in check mode (check_mode: false) and says changed, a task that fails only in check mode
  (after an apply of the same commit succeeded), and what a check stopped there left unchecked;
- recurring: the task changed again right after an apply of this commit (not idempotent);
- corrective: the commit is one this host already converged to, so the host itself changed;
- intentional: a commit this host has not converged to yet changes it.
Only intentional and corrective drift is actionable: recurring and unverifiable drift is reported but
never triggers an apply on its own (it would run on every cycle).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.events import CHECK_MODE_BLIND, Outcome, TaskResult
from agent.report import DriftKind
from agent.verdict import RunVerdict

ACTIONABLE = frozenset({DriftKind.INTENTIONAL, DriftKind.CORRECTIVE})


@dataclass(frozen=True)
class DriftContext:
    commit: str
    converged: frozenset[str]  # commits this host was in sync with before
    recurring: frozenset[str]  # task keys seen changing right after an apply of this commit


@dataclass(frozen=True)
class Finding:
    task: TaskResult
    kind: DriftKind
    reason: str | None = None  # why this kind, where the kind alone does not say (unverifiable)

    @property
    def actionable(self) -> bool:
        return self.kind in ACTIONABLE


def skipped_reason(task: TaskResult) -> str:
    return f"check mode does not run this {task.module or 'task'}, so what it would change cannot be known"


def command_reason(task: TaskResult) -> str:
    return (f"this {task.module} runs even in check mode (check_mode: false) and reports changed; "
            "whether it changes anything cannot be verified (a changed_when would tell)")


def check_only_reason(task: TaskResult) -> str:
    return (f"fails only in check mode (the apply of this commit succeeded): {task.message or 'no message'}; "
            "the check of this host stops at this task, so the tasks after it are not checked")


def _command_ran_for_real(task: TaskResult) -> bool:
    return task.real_in_check and task.module in CHECK_MODE_BLIND and task.outcome is Outcome.CHANGED


def classify_task(task: TaskResult, ctx: DriftContext) -> Finding | None:
    if task.check_mode_skip:
        return Finding(task, DriftKind.UNVERIFIABLE, skipped_reason(task))
    if task.outcome is not Outcome.CHANGED:
        return None
    if _command_ran_for_real(task):
        return Finding(task, DriftKind.UNVERIFIABLE, command_reason(task))
    reason = None if task.diffs else task.message  # e.g. why a change shows no diff
    if task.key in ctx.recurring:
        return Finding(task, DriftKind.RECURRING, reason)
    kind = DriftKind.CORRECTIVE if ctx.commit in ctx.converged else DriftKind.INTENTIONAL
    return Finding(task, kind, reason)


def classify_tasks(tasks: Iterable[TaskResult], ctx: DriftContext) -> tuple[Finding, ...]:
    return tuple(f for f in (classify_task(t, ctx) for t in tasks) if f is not None)


def check_only_findings(verdict: RunVerdict, playbooks: Mapping[str, str],
                        failed: Iterable[TaskResult] = ()) -> tuple[Finding, ...]:
    """Unverifiable findings for failures that happen only in check mode (`verdict.check_only`, plus
    `failed` when the caller knows them to be such), and for the roles such a stop left unchecked."""
    stops = (*verdict.check_only, *failed)
    found = [Finding(t, DriftKind.UNVERIFIABLE, check_only_reason(t)) for t in stops]
    if stops and not verdict.failed:
        where = stops[0].label
        found.extend(Finding(TaskResult(role=role, play="", task="(not checked)", module="",
                                        outcome=Outcome.SKIPPED), DriftKind.UNVERIFIABLE,
                             f"{playbooks.get(role, role)} was not checked: the check stopped at '{where}', "
                             "which fails only in check mode")
                     for role in verdict.not_reached)
    return tuple(found)


def recurring_after_apply(recheck: Iterable[TaskResult]) -> tuple[Finding, ...]:
    """Tasks that still change right after a successful apply are not idempotent (a command that runs
    even in check mode is unverifiable instead: it says changed whatever it does)."""
    return tuple(Finding(t, DriftKind.RECURRING, None if t.diffs else t.message) for t in recheck
                 if t.outcome is Outcome.CHANGED and not _command_ran_for_real(t))


def with_recheck(findings: tuple[Finding, ...], recurring: tuple[Finding, ...],
                 unverifiable: tuple[Finding, ...]) -> tuple[Finding, ...]:
    """The check's findings as the recheck after a successful apply shows them: a task that changed again
    (`recurring`, from recurring_after_apply) is recurring, whatever the check called it, and one the
    recheck could not check (`unverifiable`, from check_only_findings) is unverifiable. Order: the
    check's findings first, then what only the recheck found; one finding per task key."""
    again = {f.task.key for f in recurring}
    merged = tuple(Finding(f.task, DriftKind.RECURRING, f.reason) if f.task.key in again else f
                   for f in findings)
    seen = {f.task.key for f in findings}
    merged += tuple(f for f in recurring if f.task.key not in seen)
    blind = {u.task.key for u in unverifiable}
    return tuple(f for f in merged if f.task.key not in blind) + unverifiable


def failures(tasks: Iterable[TaskResult]) -> tuple[TaskResult, ...]:
    """Failed task results that fail the host by themselves (not ignored, not rescued)."""
    return tuple(t for t in tasks
                 if t.outcome in (Outcome.FAILED, Outcome.UNREACHABLE) and not t.ignored and not t.rescued)
