"""Drift exceptions (agent/collector/drift_exceptions.py): scopes, host selectors, expiry, alerts."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from agent.collector.drift_exceptions import (
    DriftException,
    ExceptionAlert,
    ExceptionScope,
    HostSelector,
    RoleKind,
    alerts_due,
    covering,
    problem,
)
from agent.collector.drift_review import ItemKey, TaskIdentity
from tests.factory import BASE_TIME

NOW = BASE_TIME
NGINX = TaskIdentity("web", "web servers", "nginx", "roles/nginx/tasks/main.yml", "nginx config")
USERS = TaskIdentity("base", "base", "users", "roles/users/tasks/main.yml", "accounts")


def exc(scope: ExceptionScope, *, id: int = 1, days: int = 30, **fields: object) -> DriftException:
    return DriftException(id=id, scope=scope, owner="bob", reason="vendor hotfix until 2.4", ticket="OPS-7",
                          created_at=NOW, expires_at=NOW + timedelta(days=days), **fields)  # type: ignore[arg-type]


def k(host: str, task: TaskIdentity = NGINX, item: str = "") -> ItemKey:
    return ItemKey(host, task, item)


WEB = frozenset({"web"})
ONE = exc(ExceptionScope.ITEM, key=k("web01"))
BY_PATTERN = exc(ExceptionScope.TASK, task=NGINX, hosts=HostSelector(pattern="web0*"))
BY_GROUP = exc(ExceptionScope.TASK, task=NGINX, hosts=HostSelector(group="web"))
ONE_USER = exc(ExceptionScope.TASK, task=USERS, item="alice")
ROLE = exc(ExceptionScope.ROLE, role="nginx")
PLAYBOOK = exc(ExceptionScope.ROLE, role="base", role_kind=RoleKind.PLAYBOOK, hosts=HostSelector(pattern="db*"))


@pytest.mark.parametrize(("exception", "key", "groups", "covered"), [
    (ONE, k("web01"), WEB, True),
    (ONE, k("web02"), WEB, False),
    (ONE, k("web01", item="x"), WEB, False),
    (BY_PATTERN, k("web01"), frozenset(), True),
    (BY_PATTERN, k("web10"), WEB, False),  # the pattern, not the group
    (BY_PATTERN, k("web01", USERS), WEB, False),
    (BY_PATTERN, k("web01", item="any loop item"), WEB, True),
    (BY_PATTERN, k("WEB01"), WEB, False),  # host names compare case-sensitively, as stored
    (BY_GROUP, k("anything"), WEB, True),
    (BY_GROUP, k("web01"), frozenset({"db"}), False),
    (ONE_USER, k("db1", USERS, "alice"), WEB, True),
    (ONE_USER, k("db1", USERS, "bob"), WEB, False),
    (ROLE, k("web07"), frozenset(), True),
    (ROLE, k("web07", USERS), frozenset(), False),
    (PLAYBOOK, k("db1", USERS), frozenset(), True),
    (PLAYBOOK, k("web1", USERS), frozenset(), False),
    (PLAYBOOK, k("db1"), frozenset(), False),  # playbook web, not base
], ids=lambda v: v.scope.value if isinstance(v, DriftException) else None)
def test_scope_matching(exception: DriftException, key: ItemKey, groups: frozenset[str], covered: bool) -> None:
    assert exception.matches(key, groups) is covered
    assert (covering([exception], key, groups, NOW) == exception.id) is covered


@pytest.mark.parametrize(("at", "active"), [
    (NOW - timedelta(seconds=1), False), (NOW, True), (NOW + timedelta(days=30, seconds=-1), True),
    (NOW + timedelta(days=30), False),
])
def test_an_exception_is_active_from_creation_until_just_before_expiry(at: datetime, active: bool) -> None:
    assert ONE.active(at) is active
    assert (covering([ONE], k("web01"), WEB, at) is not None) is active


def test_a_revoked_exception_covers_nothing_from_its_revocation() -> None:
    revoked = replace(ONE, revoked_at=NOW + timedelta(days=1))
    assert revoked.active(NOW + timedelta(hours=23)) and not revoked.active(NOW + timedelta(days=1))


def test_the_exception_expiring_last_covers_an_item() -> None:
    short, long = replace(BY_GROUP, id=3, expires_at=NOW + timedelta(days=2)), replace(ROLE, id=9)
    assert covering([short, long], k("web01"), WEB, NOW) == 9
    assert covering([short, replace(short, id=2)], k("web01"), WEB, NOW) == 2


@pytest.mark.parametrize(("change", "message"), [
    ({"owner": " "}, "owner: required for an exception"),
    ({"reason": ""}, "reason: required for an exception"),
    ({"ticket": ""}, "ticket: required for an exception"),
    ({"expires_at": NOW}, "expires_at: must be in the future"),
    ({"expires_at": NOW - timedelta(days=1)}, "expires_at: must be in the future"),
    ({"expires_at": NOW + timedelta(days=366)}, "expires_at: at most 365 days ahead"),
    ({"key": None}, "key: required for scope item"),
    ({"task": NGINX}, "task: not allowed for scope item"),
    ({"hosts": HostSelector(group="web")}, "hosts: scope item names its host in its key"),
])
def test_an_incomplete_exception_is_refused_naming_the_field(change: dict[str, object], message: str) -> None:
    assert problem(replace(ONE, **change), NOW) == message  # type: ignore[arg-type]


def test_complete_exceptions_of_each_scope_are_accepted() -> None:
    for e in (ONE, BY_PATTERN, BY_GROUP, ONE_USER, ROLE, PLAYBOOK):
        assert problem(e, NOW) is None, e
    assert problem(replace(ROLE, role=""), NOW) == "role: must not be empty"
    assert problem(replace(ROLE, role=None), NOW) == "role: required for scope role"


def test_a_host_selector_takes_one_non_empty_criterion() -> None:
    with pytest.raises(ValueError, match="a pattern or a group, not both"):
        HostSelector(pattern="web*", group="web")
    with pytest.raises(ValueError, match="must not be empty"):
        HostSelector(pattern="")


def test_alerts_come_once_each_seven_days_before_and_at_expiry() -> None:
    e = ONE  # expires NOW + 30 days
    assert alerts_due([e], NOW + timedelta(days=22, seconds=-1), set()) == []
    expiring = alerts_due([e], NOW + timedelta(days=23), set())
    assert expiring == [(1, ExceptionAlert.EXPIRING)]
    assert alerts_due([e], NOW + timedelta(days=25), set(expiring)) == []
    expired = alerts_due([e], NOW + timedelta(days=30), set(expiring))
    assert expired == [(1, ExceptionAlert.EXPIRED)]
    assert alerts_due([e], NOW + timedelta(days=40), {*expiring, *expired}) == []


def test_a_revoked_exception_does_not_alert_but_one_revoked_after_expiry_did_expire() -> None:
    revoked = replace(ONE, revoked_at=NOW + timedelta(days=1))
    assert alerts_due([revoked], NOW + timedelta(days=31), set()) == []
    late = replace(ONE, revoked_at=NOW + timedelta(days=31))
    assert alerts_due([late], NOW + timedelta(days=32), set()) == [(1, ExceptionAlert.EXPIRED)]


def test_a_short_exception_is_expiring_from_the_start() -> None:
    short = replace(ONE, expires_at=NOW + timedelta(days=2))
    assert alerts_due([short], NOW, set()) == [(1, ExceptionAlert.EXPIRING)]
