"""Compliance arithmetic (agent/collector/compliance.py): shares of hosts in sync, with and without exceptions."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.collector.compliance import ComplianceScope, Figure, HostView, Scope, figure
from agent.collector.drift_review import ItemKey, Resolution, ReviewItem, TaskIdentity
from agent.report import DriftKind
from tests.factory import BASE_TIME

NGINX = TaskIdentity("web", "web servers", "nginx", "roles/nginx/tasks/main.yml", "nginx config")
USERS = TaskIdentity("base", "base", "users", "roles/users/tasks/main.yml", "accounts")

HOSTS = [
    HostView("web1", frozenset({"web", "base"}), checked=True),  # nginx drift, accepted
    HostView("web2", frozenset({"web", "base"}), checked=True),  # nginx drift, open
    HostView("web3", frozenset({"web", "base"}), checked=True),  # in sync (its drift was resolved)
    HostView("db1", frozenset({"db", "base"}), checked=True),  # users drift open, another accepted
    HostView("db2", frozenset({"db", "base"}), checked=False),  # never checked completely
]


def item(host: str, task: TaskIdentity, *, accepted: bool = False, resolved: bool = False,
         loop: str = "") -> ReviewItem:
    return ReviewItem(ItemKey(host, task, loop), BASE_TIME, BASE_TIME, ((DriftKind.CORRECTIVE, BASE_TIME),),
                      accepted_by=1 if accepted else None,
                      resolved_at=BASE_TIME + timedelta(hours=1) if resolved else None,
                      resolution=Resolution.ABSENT if resolved else None)


ITEMS = [
    item("web1", NGINX, accepted=True),
    item("web2", NGINX),
    item("web3", NGINX, resolved=True),
    item("db1", USERS, loop="alice"),
    item("db1", USERS, loop="bob", accepted=True),
]


@pytest.mark.parametrize(("scope", "expected"), [
    (Scope(ComplianceScope.FLEET), Figure(hosts=4, in_sync=1, in_sync_with_exceptions=2, unknown=1)),
    (Scope(ComplianceScope.ROLE, "web"), Figure(3, 1, 2)),
    (Scope(ComplianceScope.ROLE, "base"), Figure(4, 3, 3, unknown=1)),  # only db1's users items count
    (Scope(ComplianceScope.ROLE, "db"), Figure(1, 1, 1, unknown=1)),  # db1 drifts in role base, not db
    (Scope(ComplianceScope.HOST, "web1"), Figure(1, 0, 1)),
    (Scope(ComplianceScope.HOST, "db1"), Figure(1, 0, 0)),  # one of its two items is not accepted
    (Scope(ComplianceScope.HOST, "db2"), Figure(0, 0, 0, unknown=1)),
    (Scope(ComplianceScope.TASK, task=NGINX), Figure(3, 1, 2)),
    (Scope(ComplianceScope.TASK, task=USERS), Figure(4, 3, 3, unknown=1)),
], ids=lambda v: f"{v.kind.value}:{v.name or (v.task.task if v.task else '')}" if isinstance(v, Scope) else None)
def test_figures_per_scope(scope: Scope, expected: Figure) -> None:
    assert figure(scope, HOSTS, ITEMS) == expected


def test_shares_are_fractions_and_none_without_checked_hosts() -> None:
    fleet = figure(Scope(ComplianceScope.FLEET), HOSTS, ITEMS)
    assert (fleet.share, fleet.share_with_exceptions) == (0.25, 0.5)
    nobody = figure(Scope(ComplianceScope.HOST, "db2"), HOSTS, ITEMS)
    assert (nobody.share, nobody.share_with_exceptions) == (None, None)
    assert figure(Scope(ComplianceScope.FLEET), [], []).share is None


def test_exceptions_never_lower_the_figure() -> None:
    for scope in (Scope(ComplianceScope.FLEET), Scope(ComplianceScope.ROLE, "web"),
                  Scope(ComplianceScope.TASK, task=USERS)):
        f = figure(scope, HOSTS, ITEMS)
        assert f.in_sync <= f.in_sync_with_exceptions <= f.hosts


def test_no_drift_is_full_compliance_and_all_open_is_none() -> None:
    checked = [h for h in HOSTS if h.checked]
    assert figure(Scope(ComplianceScope.FLEET), checked, []) == Figure(4, 4, 4)
    everywhere = [item(h.host, USERS) for h in checked]
    assert figure(Scope(ComplianceScope.FLEET), checked, everywhere) == Figure(4, 0, 0)


def test_a_task_scope_needs_its_task() -> None:
    with pytest.raises(ValueError, match="a task scope needs its task"):
        figure(Scope(ComplianceScope.TASK), HOSTS, ITEMS)
