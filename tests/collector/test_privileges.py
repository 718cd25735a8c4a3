"""Who may do what (agent.collector.auth.PRIVILEGES, the one table): every state-changing route of the app
is either in the table or in OTHER_STATE_CHANGES (authenticated by a host's or a forge's secret), and each
route in the table, through the API (bearer token or trusted proxy) and through the UI's forms (session
cookie or trusted proxy), refuses a reader and lets exactly the table's role through. A new action allowed
on one path and refused on another, or a new route left out of the table, fails here.

"Let through" means past the privilege check: the requests name no real item, rollout or enrolment, so
an allowed one ends in 400, 404 or 422 (or 200/303 when there is nothing to do), never 401 or 403; nothing
is changed either way. docs/collector.md "Who may do what".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route

from agent.collector import tokens
from agent.collector.app import create_app
from agent.collector.auth import OTHER_STATE_CHANGES, PRIVILEGES, ProxyAuth, Role
from agent.collector.context import Collector, CollectorSettings
from agent.collector.tokens import TokenKind
from tests.factory import BASE_TIME
from tests.live_collector import fresh_database

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = {"Origin": "http://collector.test"}
CHANGES = {"POST", "PUT", "PATCH", "DELETE"}
COMMIT = "a" * 40


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite only: every check here is decided before the database is written."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def settings() -> CollectorSettings:
    return CollectorSettings(operators=("olga", "otto"), reviewers=("pat",), proxy=ProxyAuth("X-Forwarded-User"))


@dataclass(frozen=True)
class Who:
    name: str
    role: Role | None  # None: a reader only
    token: TokenKind | None  # None: the trusted proxy's user


IDENTITIES = [
    Who("alice", None, TokenKind.READER), Who("rita", Role.REVIEWER, TokenKind.REVIEWER),
    Who("olga", Role.OPERATOR, TokenKind.READER),
    Who("pete", None, None), Who("pat", Role.REVIEWER, None), Who("otto", Role.OPERATOR, None),
]


def state_changing_routes(collector: Collector) -> set[str]:
    found = set()
    for route in create_app(collector).routes:
        if isinstance(route, Route):
            found |= {f"{m} {route.path}" for m in (route.methods or set()) & CHANGES}
    return found


def test_every_state_changing_route_is_in_the_table(collector) -> None:
    in_table = {route for privilege in PRIVILEGES.values() for route in privilege.routes}
    assert not in_table & set(OTHER_STATE_CHANGES)
    assert state_changing_routes(collector) == in_table | set(OTHER_STATE_CHANGES), (
        "a state-changing route must be in auth.PRIVILEGES (who may) or auth.OTHER_STATE_CHANGES (what "
        "authenticates it instead), and no entry there may name a route the app no longer has")


def request_for(action: str, route: str) -> tuple[str, str, dict[str, Any]]:
    """(method, url, body) that does `action` on `route` (body: JSON for the API, form fields for a page)."""
    method, path = route.split(" ", 1)
    verb = action.split(".", 1)[1]
    url = path.format(item_id="999", action=verb, exc_id="999", commit=COMMIT, sha=COMMIT)
    body: dict[str, Any] = {"reason": "because"}
    if action.startswith("drift.accept"):
        body |= {"scope": "item", "item_id": "999", "owner": "web team", "ticket": "OPS-1",
                 "expires_at": "2026-12-20"}
    elif action == "rollout.act":
        body |= {"action": "halt", "op": "halt"} if path.startswith("/api/") else {"op": "halt"}
    elif action == "rollout.approve":
        body |= {"plan_digests": ["b" * 64]} if path.startswith("/api/") else {"op": "approve",
                                                                              "plan_digest": "b" * 64}
    elif action.startswith("enrolment."):
        body |= {"ids": ["no-such-request"]}
    if action == "rollout.act" and path.startswith("/api/"):
        body.pop("op")
    return method, url, body


CASES = [(action, route) for action, privilege in PRIVILEGES.items() for route in privilege.routes]


def attempt(client, engine, action: str, route: str, who: Who) -> tuple[int, str]:
    """`who` does `action` on `route`: (status, the error's text)."""
    method, url, body = request_for(action, route)
    client._client.cookies.clear()
    headers: dict[str, str] = {}
    secret = tokens.create(engine, who.token, who.name, now=BASE_TIME)[1] if who.token is not None else None
    if secret is None:
        headers["X-Forwarded-User"] = who.name
    if url.startswith("/api/"):
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        response = client.request(method, url, json=body, headers=headers)
        return response.status_code, response.text
    headers |= ORIGIN
    if secret is not None:  # a browser's session; the form carries the page's CSRF token
        signed = client.post("/login", data={"token": secret, "next": "/"}, headers=ORIGIN)
        assert signed.status_code == 303, signed.text
        cookie = signed.cookies["gitops_session"]
        client._client.cookies.set("gitops_session", cookie)
        body["csrf"] = hashlib.sha256(b"gitops-collector csrf\0" + cookie.encode()).hexdigest()
    response = client.request(method, url, data=body, headers=headers)
    return response.status_code, response.text


@pytest.mark.parametrize(("action", "route"), CASES, ids=[f"{a}-{r.split(' ', 1)[1]}" for a, r in CASES])
def test_each_action_on_each_route_follows_the_table(client, engine, action, route) -> None:
    """Readers (a reader token, a proxy user in neither list) are refused; the table's role (as a token
    and as a proxy user) gets through; the other role is refused too."""
    wrong = []
    for who in IDENTITIES:
        status, text = attempt(client, engine, action, route, who)
        if who.role is PRIVILEGES[action].role:
            if status in (401, 403):
                wrong.append(f"{who.name} ({who.role}) refused: {status} {text[-300:]}")
        elif status != 403 or PRIVILEGES[action].role.value not in text:
            wrong.append(f"{who.name} ({who.role or 'reader'}) not refused as it should: {status} {text[-300:]}")
    assert not wrong, "\n".join(wrong)


def test_the_docs_list_every_action() -> None:
    text = (ROOT / "docs/collector.md").read_text(encoding="utf-8")
    section = text.split("### Who may do what", 1)[1].split("\n#", 1)[0]
    for action, privilege in PRIVILEGES.items():
        assert f"`{action}`" in section and privilege.role.value in section, action
