"""Compliance figures: the share of hosts in sync in a scope, with and without exceptions. Pure.

A host in a scope is in sync when it has no current drift item in that scope, and in sync with
exceptions when each of those items is accepted. Hosts never checked completely are `unknown`: counted
apart, never in the denominator. docs/drift-review.md section 5 gives the reasons.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from agent.collector.drift_review import ItemState, ReviewItem, TaskIdentity


class ComplianceScope(enum.StrEnum):
    FLEET = "fleet"
    ROLE = "role"  # the agent's role (a playbook, an inventory group)
    HOST = "host"
    TASK = "task"


@dataclass(frozen=True)
class HostView:
    host: str
    roles: frozenset[str]
    checked: bool  # has had at least one complete check


@dataclass(frozen=True)
class Figure:
    """Counts of hosts; `share*` are fractions in [0, 1], None when no checked host is in scope."""

    hosts: int
    in_sync: int
    in_sync_with_exceptions: int
    unknown: int = 0

    @property
    def share(self) -> float | None:
        return self.in_sync / self.hosts if self.hosts else None

    @property
    def share_with_exceptions(self) -> float | None:
        return self.in_sync_with_exceptions / self.hosts if self.hosts else None


@dataclass(frozen=True)
class Scope:
    kind: ComplianceScope
    name: str = ""  # the role's or the host's name
    task: TaskIdentity | None = None

    def has_host(self, view: HostView) -> bool:
        if self.kind is ComplianceScope.ROLE:
            return self.name in view.roles
        if self.kind is ComplianceScope.HOST:
            return view.host == self.name
        if self.kind is ComplianceScope.TASK:
            assert self.task is not None
            return self.task.role in view.roles
        return True

    def has_item(self, item: ReviewItem) -> bool:
        if self.kind is ComplianceScope.ROLE:
            return item.key.task.role == self.name
        if self.kind is ComplianceScope.TASK:
            return item.key.task == self.task
        return True  # the fleet, a host: every item of the hosts in scope


def figure(scope: Scope, hosts: Iterable[HostView], items: Iterable[ReviewItem]) -> Figure:
    """The figure of `scope` from every host's view and the current items (resolved ones are ignored)."""
    if scope.kind is ComplianceScope.TASK and scope.task is None:
        raise ValueError("a task scope needs its task")
    drifting: set[str] = set()
    unaccepted: set[str] = set()
    for item in items:
        if item.state is ItemState.RESOLVED or not scope.has_item(item):
            continue
        drifting.add(item.key.host)
        if item.state is not ItemState.ACCEPTED:
            unaccepted.add(item.key.host)
    total = in_sync = with_exceptions = unknown = 0
    for view in hosts:
        if not scope.has_host(view):
            continue
        if not view.checked:
            unknown += 1
            continue
        total += 1
        in_sync += view.host not in drifting
        with_exceptions += view.host not in unaccepted
    return Figure(total, in_sync, with_exceptions, unknown)
