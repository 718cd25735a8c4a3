"""Pure: what a running cycle tells an onlooker (the CLI's progress display on a terminal).

A cycle takes an optional `Progress` callback and calls it with these small records as it goes: a phase
starts (fetch, verify, plan, check, apply, recheck), a phase is done (with a one-line detail), a task
starts, a task is done (its outcome). The core never prints; whoever passed the callback decides what to
show. Raw ansible-runner events are turned into these records here (via agent.events), so they never
travel further than agent.runner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from agent import events


@dataclass(frozen=True)
class PhaseStarted:
    phase: str  # fetch | verify | plan | check | apply | recheck


@dataclass(frozen=True)
class PhaseDone:
    phase: str
    detail: str = ""  # one line: the commit fetched, the signature, the roles planned


@dataclass(frozen=True)
class TaskStarted:
    role: str  # the playbook the task comes from (playbooks/<role>.yml)
    task: str


@dataclass(frozen=True)
class TaskDone:
    role: str
    task: str
    outcome: str  # ok | changed | failed | skipped | unreachable


ProgressEvent = PhaseStarted | PhaseDone | TaskStarted | TaskDone
Progress = Callable[[ProgressEvent], None]


def from_runner_event(event: Mapping[str, Any]) -> TaskStarted | TaskDone | None:
    """One raw ansible-runner event -> a task record, or None for the many events that are neither."""
    if event.get("event") == "playbook_on_task_start":
        data = event.get("event_data") or {}
        if not isinstance(data, Mapping):
            return None
        playbook = data.get("playbook")
        role = PurePath(playbook).stem if isinstance(playbook, str) and playbook else ""
        return TaskStarted(role=role, task=str(data.get("task") or data.get("task_action") or ""))
    result = events.task_result(event, {})
    if result is None:
        return None
    return TaskDone(role=result.role, task=result.task, outcome=result.outcome.value)
