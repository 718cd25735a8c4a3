"""Drift exceptions: which items an exception covers, when it is active, and which alerts are due.

Pure: no clock (callers pass `now`), no I/O. An exception accepts drift until a date; it changes what
counts and what alerts, never what a host applies (Git decides that). Scopes and the host selector are
described in docs/drift-review.md section 4.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.collector.drift_review import ItemKey, TaskIdentity

EXPIRING_WITHIN = timedelta(days=7)
MAX_DAYS = 365  # the default limit on an exception's life (a collector setting when wired)


class ExceptionScope(enum.StrEnum):
    ITEM = "item"  # one host, one task, one loop item
    TASK = "task"  # one task (any or one loop item) on the hosts the selector picks
    ROLE = "role"  # every task of a role on the hosts the selector picks


class RoleKind(enum.StrEnum):
    ANSIBLE = "ansible"  # an Ansible role (roles/NAME): DriftItem.ansible_role
    PLAYBOOK = "playbook"  # the agent's role (playbooks/NAME.yml, an inventory group): DriftItem.role


class ExceptionAlert(enum.StrEnum):
    EXPIRING = "exception_expiring"
    EXPIRED = "exception_expired"


@dataclass(frozen=True)
class HostSelector:
    """Every host (both None), the hosts whose name matches a shell-style `pattern`, or a `group`'s."""

    pattern: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if self.pattern is not None and self.group is not None:
            raise ValueError("a host selector takes a pattern or a group, not both")
        if self.pattern == "" or self.group == "":
            raise ValueError("a host selector's pattern or group must not be empty")

    def matches(self, host: str, groups: Collection[str]) -> bool:
        if self.pattern is not None:
            return fnmatch.fnmatchcase(host, self.pattern)
        return self.group is None or self.group in groups


@dataclass(frozen=True)
class DriftException:
    """An accepted exception. Exactly the fields of its scope are set (see `problem`)."""

    id: int
    scope: ExceptionScope
    owner: str
    reason: str
    ticket: str
    created_at: datetime
    expires_at: datetime
    key: ItemKey | None = None  # scope item
    task: TaskIdentity | None = None  # scope task
    item: str | None = None  # scope task: one loop item ('' for a task without loop); None: any
    role: str | None = None  # scope role
    role_kind: RoleKind = RoleKind.ANSIBLE
    hosts: HostSelector = HostSelector()
    revoked_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        """Half-open: from created_at (included) to expires_at (excluded), unless revoked before now."""
        revoked = self.revoked_at is not None and self.revoked_at <= now
        return self.created_at <= now < self.expires_at and not revoked

    def matches(self, key: ItemKey, groups: Collection[str]) -> bool:
        """Whether this exception's scope covers the item `key` on a host with `groups` (its roles)."""
        if self.scope is ExceptionScope.ITEM:
            return key == self.key
        if not self.hosts.matches(key.host, groups):
            return False
        if self.scope is ExceptionScope.TASK:
            return key.task == self.task and (self.item is None or key.item == self.item)
        named = key.task.ansible_role if self.role_kind is RoleKind.ANSIBLE else key.task.role
        return named == self.role


def problem(exc: DriftException, now: datetime, max_days: int = MAX_DAYS) -> str | None:
    """What is wrong with a new exception, as one line naming the field; None when it is acceptable."""
    for name in ("owner", "reason", "ticket"):
        if not getattr(exc, name).strip():
            return f"{name}: required for an exception"
    if exc.expires_at <= now:
        return "expires_at: must be in the future"
    if exc.expires_at > now + timedelta(days=max_days):
        return f"expires_at: at most {max_days} days ahead"
    wanted = {ExceptionScope.ITEM: "key", ExceptionScope.TASK: "task", ExceptionScope.ROLE: "role"}
    for scope, field in wanted.items():
        present = getattr(exc, field) is not None
        if present != (exc.scope is scope):
            return f"{field}: {'required' if not present else 'not allowed'} for scope {exc.scope.value}"
    if exc.scope is ExceptionScope.ITEM and exc.hosts != HostSelector():
        return "hosts: scope item names its host in its key"
    if exc.role == "":
        return "role: must not be empty"
    return None


def covering(exceptions: Sequence[DriftException], key: ItemKey, groups: Collection[str],
             now: datetime) -> int | None:
    """The id of the active exception covering `key`: the one that expires last (then the lowest id)."""
    found = [e for e in exceptions if e.active(now) and e.matches(key, groups)]
    if not found:
        return None
    return min(found, key=lambda e: (-e.expires_at.timestamp(), e.id)).id


def alerts_due(exceptions: Sequence[DriftException], now: datetime,
               sent: Collection[tuple[int, ExceptionAlert]]) -> list[tuple[int, ExceptionAlert]]:
    """The alerts to send now, once each: an exception in its last 7 days, an exception expired.

    `sent` holds the (exception id, alert) already sent. A revoked exception alerts no more. An exception
    created with less than 7 days to run is expiring from the start (its owner is told once).
    """
    due = []
    for e in exceptions:
        if e.revoked_at is not None and e.revoked_at <= min(now, e.expires_at):
            continue
        if now >= e.expires_at:
            alert = ExceptionAlert.EXPIRED
        elif now >= e.expires_at - EXPIRING_WITHIN:
            alert = ExceptionAlert.EXPIRING
        else:
            continue
        if (e.id, alert) not in sent:
            due.append((e.id, alert))
    return due
