"""Pure: task results of a check run -> drift findings with their kind.

- unverifiable: check mode could not tell (command/shell-like tasks skipped in check mode);
- recurring: the task changed again right after an apply of this commit (not idempotent);
- corrective: the commit is one this host already converged to, so the host itself changed;
- intentional: a commit this host has not converged to yet changes it.
Only intentional and corrective drift is actionable: recurring and unverifiable drift is reported but
never triggers an apply on its own (it would run on every cycle).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.events import Outcome, TaskResult
from agent.report import DriftKind

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

    @property
    def actionable(self) -> bool:
        return self.kind in ACTIONABLE


def classify_task(task: TaskResult, ctx: DriftContext) -> DriftKind | None:
    if task.check_mode_skip:
        return DriftKind.UNVERIFIABLE
    if task.outcome is not Outcome.CHANGED:
        return None
    if task.key in ctx.recurring:
        return DriftKind.RECURRING
    if ctx.commit in ctx.converged:
        return DriftKind.CORRECTIVE
    return DriftKind.INTENTIONAL


def classify(tasks: Iterable[TaskResult], ctx: DriftContext) -> tuple[Finding, ...]:
    findings = []
    for task in tasks:
        kind = classify_task(task, ctx)
        if kind is not None:
            findings.append(Finding(task, kind))
    return tuple(findings)


def recurring_after_apply(recheck: Iterable[TaskResult]) -> tuple[Finding, ...]:
    """Tasks that still change right after a successful apply are not idempotent."""
    return tuple(Finding(t, DriftKind.RECURRING) for t in recheck if t.outcome is Outcome.CHANGED)


def failures(tasks: Iterable[TaskResult]) -> tuple[TaskResult, ...]:
    return tuple(t for t in tasks
                 if t.outcome in (Outcome.FAILED, Outcome.UNREACHABLE) and not t.ignored)
