"""Pure: one Ansible run's outcome for this host -> what the agent may conclude from it.

- Failure is judged as Ansible's own recap judges it: the host failed when the recap counts a failure
  or an unreachable for it. A failed task whose block's `rescue:` took over, or one with ignore_errors,
  does not fail the host. A recap failure that no task result explains still fails it (a synthetic
  result says so), and task failures with no recap at all (a run cut short) count as they are.
- Failures known to happen only in check mode for this commit (a check that fails where the apply of
  the same commit succeeded) are set apart: they are reported as unverifiable, not as a failure.
- A role counts only with evidence: a role playbook in which no task ran for this host (every play's
  `hosts:` matched nothing, every task filtered away by tags, no tasks at all; implicit fact gathering
  is not a task) is an error that names the playbook, unless an earlier failure stopped the run first.
- Changes the recap counts but no task result shows (a result lost on the way) become one synthetic
  changed result, so they can never pass as "in sync".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.events import GATHER_MODULES, Outcome, ParsedRun, TaskResult

UNATTRIBUTED_TASK = "(not attributable to a task)"


@dataclass(frozen=True)
class RunVerdict:
    failed: tuple[TaskResult, ...] = ()  # what failed the host, as the report names it
    check_only: tuple[TaskResult, ...] = ()  # failures known to happen only in check mode
    unattributed: tuple[TaskResult, ...] = ()  # synthetic changed results the recap demands
    idle_roles: tuple[str, ...] = ()  # one error per role playbook that ran no task for the host
    not_reached: tuple[str, ...] = ()  # roles with no task because the run stopped before them

    @property
    def host_failed(self) -> bool:
        return bool(self.failed)


def _failing(tasks: Sequence[TaskResult]) -> list[TaskResult]:
    return [t for t in tasks if t.outcome in (Outcome.FAILED, Outcome.UNREACHABLE)
            and not t.ignored and not t.rescued]


def _recap_failures(run: ParsedRun, failing: list[TaskResult]) -> list[TaskResult]:
    counted = run.stats.failed + run.stats.unreachable
    if not run.recap_seen:
        return failing
    if counted == 0:
        return []  # every failed task was rescued or ignored, as Ansible's recap says
    if failing:
        return failing
    return [TaskResult(role="", play="", task=UNATTRIBUTED_TASK, module="", outcome=Outcome.FAILED,
                       message=f"Ansible's recap counts {run.stats.failed} failed and "
                               f"{run.stats.unreachable} unreachable task(s) for this host, but no "
                               "failed task result was received"
                               + "".join(f"; {m}" for m in run.messages))]


def _unattributed_changes(run: ParsedRun) -> tuple[TaskResult, ...]:
    shown = {t.execution for t in run.tasks if t.outcome is Outcome.CHANGED
             or (t.outcome is Outcome.FAILED and t.ignored)}
    missing = run.stats.changed - len(shown)
    if not run.recap_seen or missing <= 0:
        return ()
    return (TaskResult(role="", play="", task=UNATTRIBUTED_TASK, module="", outcome=Outcome.CHANGED,
                       message=f"Ansible's recap counts {run.stats.changed} changed task(s) for this host "
                               f"but the task results show {len(shown)}: {missing} change(s) cannot be "
                               "attributed to a task (a result may have been lost)"),)


def _idle_message(role: str, playbook: str, run: ParsedRun, host: str) -> str:
    plays = [p for p in run.no_hosts if p.role == role]
    if plays:
        why = "; ".join(f"play '{p.play}' (hosts: {p.pattern}) matched no host" for p in plays)
    elif role not in run.started:
        why = "the playbook did not start"
    else:
        why = "its plays target the host but no task of theirs ran for it (filtered away by tags, or none)"
    return f"{playbook} ran no task for host '{host}': {why}; a role that runs nothing is never in sync"


def judge(run: ParsedRun, *, host: str, roles: Sequence[str], playbooks: Mapping[str, str],
          check_only_keys: frozenset[str] = frozenset()) -> RunVerdict:
    """Judge one run for `host`. `roles` are the plan's roles (each `playbooks[role]` is its playbook as
    the report names it); `check_only_keys` the task keys known to fail only in check mode for this
    commit (empty for an apply)."""
    failures = _recap_failures(run, _failing(run.tasks))
    check_only = tuple(t for t in failures if t.key in check_only_keys)
    failed = tuple(t for t in failures if t.key not in check_only_keys)
    worked = {t.role for t in run.tasks if t.module not in GATHER_MODULES}
    stopped = bool(failures)
    idle, not_reached = [], []
    for role in roles:
        if role in worked:
            continue
        if stopped and not any(p.role == role for p in run.no_hosts):
            not_reached.append(role)
        else:
            idle.append(_idle_message(role, playbooks.get(role, role), run, host))
    return RunVerdict(failed=failed, check_only=check_only, unattributed=_unattributed_changes(run),
                      idle_roles=tuple(idle), not_reached=tuple(not_reached))
