"""Every review action (acknowledge, reopen, accept, revoke), through the API and through the UI's forms,
against every refusal issue 19 names: a reader acting, no identity, a missing reason, an expiry in the
past (accept), a CSRF token missing or wrong, a form from another site. Each refusal is one line naming
what is wrong, and changes nothing: the item's and the exception's state stay, the audit log gains no row.

Also: the audit log viewable as a page, and a task's page grouping its hosts by identical diff.
docs/drift-review.md sections 4 and 6.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select

from agent.collector.review_views import (
    ACK_FORM_FIELDS,
    EXCEPTION_FIELDS,
    EXCEPTION_FORM_FIELDS,
    REASON_FIELDS,
    REVOKE_FORM_FIELDS,
)
from agent.collector.tables import review_audit
from agent.report import Diff, DriftItem, DriftKind, Status
from tests.collector.test_drift_inbox import (  # noqa: F401 (fixtures)
    HOST,
    ORIGIN,
    at,
    drift,
    exception_body,
    items,
    login,
    one_item,
    reviewer,
)
from tests.factory import make_report
from tests.live_collector import fresh_database

ACTIONS = ("ack", "unack", "accept", "revoke")


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite only: every refusal here is decided before anything is written, and the writes themselves
    run on both databases in test_drift_inbox.py (a PostgreSQL database per case would cost ~3 s each)."""
    # a test that uses `engine` gets a migrated copy (engine's db.prepare then finds it at the newest
    # revision); any other gets an empty database, as `gitops-collector migrate` or serve would meet it
    with fresh_database(request.param, tmp_path, migrated="engine" in request.fixturenames) as url:
        yield url


@dataclass(frozen=True)
class Target:
    """One action made ready: its API and form URLs, a valid body, and how to read what it changes."""

    api: str
    form: str
    body: dict[str, Any]
    state: Any  # () -> the item's and the exceptions' states


@pytest.fixture
def target(request, client, reviewer, reader, one_item) -> Target:  # noqa: F811 (fixtures)
    """The state before the action: unack needs an acknowledged item, revoke an active exception."""
    action: str = request.param
    item = one_item["id"]

    def state() -> tuple[str, list[str]]:
        exceptions = client.get("/api/v1/drift/exceptions", headers=reader).json()["items"]
        return items(client, reader)[0]["state"], [e["state"] for e in exceptions]

    if action in ("ack", "unack"):
        if action == "unack":
            done = client.post(f"/api/v1/drift/items/{item}/ack", json={"reason": "on it"}, headers=reviewer)
            assert done.status_code == 200, done.text
        return Target(f"/api/v1/drift/items/{item}/{action}", f"/drift/items/{item}/{action}",
                      {"reason": "because"}, state)
    if action == "accept":
        return Target("/api/v1/drift/exceptions", "/drift/exceptions", exception_body(item), state)
    created = client.post("/api/v1/drift/exceptions", json=exception_body(item), headers=reviewer)
    assert created.status_code == 201, created.text
    exc = created.json()["id"]
    return Target(f"/api/v1/drift/exceptions/{exc}/revoke", f"/drift/exceptions/{exc}/revoke",
                  {"reason": "fixed upstream"}, state)


def audit_rows(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(review_audit)).scalar_one())


def sign_in(client, headers) -> str:
    """Sign in with the bearer token's secret; returns the session's CSRF token (ui_auth.csrf_expected)."""
    login(client, headers)
    cookie = next(c.value for c in client._client.cookies.jar if c.name == "gitops_session" and c.value)
    return hashlib.sha256(b"gitops-collector csrf\0" + cookie.encode("utf-8")).hexdigest()


def form_fields(body: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in body.items() if v is not None}


API_REFUSALS = {  # name: (who, change to the body, status, the message names)
    "a reader acting": ("reader", {}, 403, "reviewer"),
    "no token": ("nobody", {}, 401, "token"),
    "a missing reason": ("reviewer", {"reason": None}, 422, "reason"),
    "a blank reason": ("reviewer", {"reason": "  "}, 422, "reason"),
}


@pytest.mark.parametrize("refusal", API_REFUSALS)
@pytest.mark.parametrize("target", ACTIONS, indirect=True)
def test_every_api_action_refuses(client, engine, reader, reviewer, target, refusal):  # noqa: F811
    who, change, status, says = API_REFUSALS[refusal]
    before, rows = target.state(), audit_rows(engine)
    headers = {"reader": reader, "reviewer": reviewer, "nobody": {}}[who]
    body = {k: v for k, v in {**target.body, **change}.items() if v is not None}
    response = client.post(target.api, json=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error and "\n" not in error, error
    assert (target.state(), audit_rows(engine)) == (before, rows)


@pytest.mark.parametrize("target", ["accept"], indirect=True)
@pytest.mark.parametrize("expires_at", ["2026-11-20", "2026-11-20T11:59:59Z", "2020-01-01", "0001-01-01"])
def test_accepting_with_an_expiry_in_the_past_is_refused(client, engine, reviewer, target, expires_at):  # noqa: F811
    before, rows = target.state(), audit_rows(engine)
    response = client.post(target.api, json={**target.body, "expires_at": expires_at}, headers=reviewer)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("expires_at: must be in the future")
    assert (target.state(), audit_rows(engine)) == (before, rows)


BODY_REFUSALS = {  # name: (action, change to the body, the one-line error starts with)
    "a misspelt host_pattern (it would widen the exception to every host)": (
        "accept", {"scope": "task", "host_patern": "web-*"}, "'host_patern': not a field of this action"),
    "a field of another action": ("accept", {"note": "x"}, "'note': not a field of this action"),
    "a misspelt reason on ack": ("ack", {"reason": None, "reasons": "x"}, "'reasons': not a field of this action"),
    "an owner on revoke": ("revoke", {"owner": "x"}, "'owner': not a field of this action (it takes reason)"),
    "an unknown role_kind": ("accept", {"scope": "role", "role": "nginx", "role_kind": "group"},
                             "role_kind: 'group' is not ansible or playbook"),
    "both host selectors": ("accept", {"scope": "task", "host_pattern": "web-*", "host_group": "web"},
                            "host_pattern/host_group: a host selector takes a pattern or a group, not both"),
    "an expiry without a time zone": ("accept", {"expires_at": "2026-12-01T00:00:00"},
                                      "expires_at: '2026-12-01T00:00:00' has no time zone: add Z for UTC"),
    "an expiry with minutes only, no zone": ("accept", {"expires_at": "2026-12-01T00:00"},
                                             "expires_at: '2026-12-01T00:00' has no time zone"),
    "a same_loop_item that is no yes or no (read as no it would cover every loop item)": (
        "accept", {"scope": "task", "same_loop_item": "yes"}, "same_loop_item: expected true or false"),
    "a same_loop_item number": ("accept", {"scope": "task", "same_loop_item": 2}, "same_loop_item: expected"),
    # Python's 1 == True and 0.0 == False: numbers were read as yes and no
    "a same_loop_item 1": ("accept", {"scope": "task", "same_loop_item": 1}, "same_loop_item: expected"),
    "a same_loop_item 0.0": ("accept", {"scope": "task", "same_loop_item": 0.0}, "same_loop_item: expected"),
    # refused whatever the scope: a "yes" on scope item was let through (the flag was read for task only)
    "a same_loop_item 'yes' on scope item": ("accept", {"scope": "item", "same_loop_item": "yes"},
                                            "same_loop_item: expected true or false"),
    "a same_loop_item 'yes' on scope role": ("accept", {"scope": "role", "role": "nginx", "same_loop_item": "yes"},
                                            "same_loop_item: expected true or false"),
    # "" read as no selector is every host: an unset variable in `"host_pattern": "$HOSTS"` would widen it
    "an empty host_pattern": ("accept", {"scope": "task", "host_pattern": ""}, "host_pattern: empty; leave it out"),
    "an empty host_group": ("accept", {"scope": "role", "role": "nginx", "host_group": ""}, "host_group: empty"),
    "a blank host_pattern": ("accept", {"scope": "task", "host_pattern": "  "}, "host_pattern: '  ' is blank"),
    "an expiry that is no day": ("accept", {"expires_at": "2026-02-30"}, "expires_at: '2026-02-30' is not a date"),
    # a NUL was stored by SQLite and refused by PostgreSQL as "the database refused a value" (no field
    # named): every text an action stores is refused naming its field, on both databases
    "a NUL in an ack's reason": ("ack", {"reason": "on\x00it"}, "reason: must not contain a NUL character"),
    "a NUL in a revoke's reason": ("revoke", {"reason": "done\x00"}, "reason: must not contain a NUL"),
    "a NUL in an exception's reason": ("accept", {"reason": "\x00"}, "reason: must not contain a NUL"),
    "a NUL in the owner": ("accept", {"owner": "web\x00team"}, "owner: must not contain a NUL"),
    "a NUL in the ticket": ("accept", {"ticket": "OPS-1\x00"}, "ticket: must not contain a NUL"),
    "a NUL in the role": ("accept", {"scope": "role", "role": "ngi\x00nx"}, "role: must not contain a NUL"),
    "a NUL in the host_pattern": ("accept", {"scope": "task", "host_pattern": "web-\x00*"},
                                  "host_pattern: must not contain a NUL"),
    "a NUL in the host_group": ("accept", {"scope": "task", "host_group": "\x00web"},
                                "host_group: must not contain a NUL"),
}


@pytest.mark.parametrize("refusal", BODY_REFUSALS)
def test_bad_bodies_are_refused_naming_the_field(client, engine, reviewer, reader, one_item, refusal):  # noqa: F811
    action, change, says = BODY_REFUSALS[refusal]
    exc = None
    if action == "revoke":
        exc = client.post("/api/v1/drift/exceptions", json=exception_body(one_item["id"]), headers=reviewer).json()
    rows = audit_rows(engine)
    url = {"accept": "/api/v1/drift/exceptions", "ack": f"/api/v1/drift/items/{one_item['id']}/ack",
           "revoke": f"/api/v1/drift/exceptions/{exc['id'] if exc else 0}/revoke"}[action]
    base = exception_body(one_item["id"]) if action == "accept" else {"reason": "because"}
    body = {k: v for k, v in {**base, **change}.items() if v is not None}
    response = client.post(url, json=body, headers=reviewer)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error.startswith(says) and "\n" not in error, error
    assert audit_rows(engine) == rows
    assert [e["state"] for e in client.get("/api/v1/drift/exceptions", headers=reader).json()["items"]] == (
        ["active"] if exc else [])


FORM_REFUSALS = {  # name: (signed in as, fields changed, headers, status, the page says)
    "a CSRF token missing": ("reviewer", {"csrf": None}, ORIGIN, 403, "CSRF"),
    "a CSRF token wrong": ("reviewer", {"csrf": "0" * 64}, ORIGIN, 403, "CSRF"),
    "a form from another site": ("reviewer", {}, {"Origin": "http://evil.test"}, 403, "Origin or Referer"),
    "a reader acting": ("reader", {}, ORIGIN, 403, "reviewer"),
    "a missing reason": ("reviewer", {"reason": None}, ORIGIN, 422, "reason"),
}


@pytest.mark.parametrize("refusal", FORM_REFUSALS)
@pytest.mark.parametrize("target", ACTIONS, indirect=True)
def test_every_form_action_refuses(client, engine, reader, reviewer, target, refusal):  # noqa: F811
    who, change, headers, status, says = FORM_REFUSALS[refusal]
    before, rows = target.state(), audit_rows(engine)
    # a reader's pages carry no form: the token is made here from their own session, past the CSRF check
    csrf = sign_in(client, {"reader": reader, "reviewer": reviewer}[who])
    fields = {k: v for k, v in {**form_fields(target.body), "csrf": csrf, **change}.items() if v is not None}
    response = client.post(target.form, data=fields, headers=headers)
    assert response.status_code == status, response.text
    assert says in response.text
    assert (target.state(), audit_rows(engine)) == (before, rows)


@pytest.mark.parametrize("target", ACTIONS, indirect=True)
def test_every_form_action_works_with_its_token(client, engine, reviewer, target):  # noqa: F811
    """The control for the refusals above: the same form with the page's token goes through, audited."""
    before, rows = target.state(), audit_rows(engine)
    csrf = sign_in(client, reviewer)
    response = client.post(target.form, data={**form_fields(target.body), "csrf": csrf}, headers=ORIGIN)
    assert response.status_code == 303, response.text
    assert target.state() != before and audit_rows(engine) == rows + 1


def test_the_audit_log_is_a_page_too(client, reviewer, reader, one_item):  # noqa: F811
    client.post(f"/api/v1/drift/items/{one_item['id']}/ack", json={"reason": "on it, OPS-12"}, headers=reviewer)
    login(client, reader)
    page = client.get("/drift/audit")
    assert page.status_code == 200
    text = page.text
    assert "rita" in text and "acknowledge" in text and "on it, OPS-12" in text
    assert 'href="/drift/audit/export?format=csv"' in text or "/drift/audit/export" in text
    assert client.get("/drift/audit/export?format=jsonl").text.count("\n") == 1


def test_a_tasks_page_groups_hosts_by_identical_diff(client, send, reader):
    """Three hosts with one diff, one with another, one with none: three groups, largest first."""

    def with_diff(after: str | None) -> DriftItem:
        diffs = () if after is None else (Diff(path="/etc/nginx/nginx.conf", before="a\n", after=after),)
        return DriftItem(play="web servers", task="nginx config", role="web", module="ansible.builtin.template",
                         kind=DriftKind.CORRECTIVE, ansible_role="nginx", task_path="roles/nginx/tasks/main.yml:3",
                         first_seen_at=None, diffs=diffs)

    for host, after in (("web-1", "b\n"), ("web-2", "b\n"), ("web-3", "b\n"), ("web-4", "c\n"), ("web-5", None)):
        response = send(make_report(host, status=Status.DRIFTED, finished_at=at(0), drift=(with_diff(after),)))
        assert response.status_code == 201, response.text
    login(client, reader)
    page = client.get("/drift?task=nginx%20config").text
    groups = []
    for section in page.split('<section class="diff-group">')[1:]:
        heading = " ".join(section.split("</h2>")[0].split("<h2>")[1].split())
        groups.append((heading.split(" <code")[0], frozenset(n for n in range(1, 6) if f"web-{n}<" in section)))
    assert groups[0] == ("3 host(s), same diff", frozenset({1, 2, 3})), groups
    assert set(groups[1:]) == {("1 host(s), same diff", frozenset({4})), ("1 host(s), no diff reported",
                                                                          frozenset({5}))}, groups


@pytest.mark.parametrize(("query", "status", "says"), [
    ("", 400, "item: required (the drift item the exception starts from"),
    ("?item=", 400, "item: required"),
    ("?item=abc", 400, "item: expected a whole number"),
    ("?item=999999", 404, "drift item 999999 does not exist"),
])
def test_the_accept_form_names_a_missing_or_unknown_item(client, reviewer, one_item, query, status, says):  # noqa: F811
    login(client, reviewer)
    response = client.get(f"/drift/accept{query}")
    assert response.status_code == status and says in response.text, response.text


FORM_BODY_REFUSALS = {  # name: (action, fields changed or added, raw text appended to the form, the page says)
    "a misspelt host_pattern (it would widen the exception to every host)": (
        "accept", {"scope": "task", "host_patern": "web-*"}, "", "&#39;host_patern&#39;: not a field of this form"),
    "a misspelt same_loop_item": ("accept", {"scope": "task", "same_loop_itme": "on"}, "",
                                  "&#39;same_loop_itme&#39;: not a field of this form"),
    "a field of another action on ack": ("ack", {"owner": "x"}, "", "&#39;owner&#39;: not a field of this form"),
    # the accept form's box sends "true" when ticked: anything else is refused, as the API does
    "a same_loop_item that is no checkbox's value": ("accept", {"scope": "task", "same_loop_item": "yes"}, "",
                                                     "same_loop_item: expected true or false"),
    "a misspelt reason on revoke": ("revoke", {"reasons": "x"}, "", "&#39;reasons&#39;: not a field of this form"),
    # read as its first value, the second host_pattern would be dropped without a word
    "a field given twice": ("accept", {"scope": "task", "host_pattern": "web-*"}, "&host_pattern=db-*",
                            "host_pattern: given more than once"),
    # cut at 8 KiB, the reason was stored cut short (and a field after it dropped) without a word
    "a form over the limit": ("accept", {"reason": "r" * 9000}, "", "over the limit of 8192"),
    "a NUL in a form's reason": ("ack", {"reason": "on\x00it"}, "", "reason: must not contain a NUL"),
    "a NUL in a form's owner": ("accept", {"owner": "web\x00"}, "", "owner: must not contain a NUL"),
}


@pytest.mark.parametrize(("target", "refusal"), [(v[0], k) for k, v in FORM_BODY_REFUSALS.items()],
                         ids=list(FORM_BODY_REFUSALS), indirect=["target"])
def test_bad_forms_are_refused_naming_the_field(client, engine, reviewer, target, refusal):  # noqa: F811
    """The forms get the API's rules (test_bad_bodies_are_refused_naming_the_field): a field the action does
    not take, one given twice, or a form cut at its size limit is refused, and nothing changes."""
    _, change, extra, says = FORM_BODY_REFUSALS[refusal]
    before, rows = target.state(), audit_rows(engine)
    csrf = sign_in(client, reviewer)
    fields = {**form_fields(target.body), "csrf": csrf, **change}
    response = client.post(target.form, content=urlencode(fields) + extra,
                           headers={**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code in (413, 422), response.text
    assert says in response.text, response.text[-2000:]
    assert (target.state(), audit_rows(engine)) == (before, rows)


@pytest.mark.parametrize("target", ["ack", "unack", "accept", "revoke"], indirect=True)
def test_a_form_body_that_is_not_urlencoded_is_refused(client, engine, reviewer, target):  # noqa: F811
    """What an HTML form sends by default, and nothing else: a multipart body (a form with enctype changed,
    or a script) was read as one odd field and refused with a misleading line; now 415, naming it."""
    before, rows = target.state(), audit_rows(engine)
    csrf = sign_in(client, reviewer)
    fields = {**form_fields(target.body), "csrf": csrf}
    for media_type in ("multipart/form-data; boundary=b0", "text/plain"):
        response = client.post(target.form, content=urlencode(fields), headers={**ORIGIN, "Content-Type": media_type})
        assert response.status_code == 415, response.text
        kind = media_type.split(";")[0]
        assert f"form: Content-Type must be application/x-www-form-urlencoded, got &#39;{kind}&#39;" in response.text
    assert (target.state(), audit_rows(engine)) == (before, rows)


class _Forms(HTMLParser):
    """The fields of each POST form of a page: {action: {field names}} (inputs, selects, textareas)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, set[str]] = {}
        self._open: set[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form" and (values.get("method") or "").lower() == "post":
            self._open = self.forms.setdefault(values.get("action") or "", set())
        elif tag in ("input", "select", "textarea") and self._open is not None and values.get("name"):
            self._open.add(str(values["name"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = None


def post_forms(client, url: str) -> dict[str, set[str]]:
    page = client.get(url)
    assert page.status_code == 200, page.text
    parser = _Forms()
    parser.feed(page.text)
    return parser.forms


def test_every_review_form_offers_every_field_its_api_takes(client, reviewer, one_item):  # noqa: F811
    """The kind behind the accept form without `same_loop_item` (an exception made in the UI covered every
    loop item, with no way to say otherwise): each review form's fields (less its CSRF token and the page
    to go back to) are exactly the fields its API action takes, so the UI has the API's every choice."""
    item = one_item["id"]
    login(client, reviewer)
    forms = post_forms(client, f"/drift?task={one_item['task']}")
    assert forms[f"/drift/items/{item}/ack"] - {"csrf", "next"} == set(REASON_FIELDS)
    forms = post_forms(client, f"/drift/accept?item={item}")
    assert forms["/drift/exceptions"] - {"csrf"} == set(EXCEPTION_FIELDS)
    client.post(f"/api/v1/drift/items/{item}/ack", json={"reason": "on it"}, headers=reviewer)
    forms = post_forms(client, f"/drift?task={one_item['task']}")
    assert forms[f"/drift/items/{item}/unack"] - {"csrf", "next"} == set(REASON_FIELDS)
    exc = client.post("/api/v1/drift/exceptions", json=exception_body(item), headers=reviewer).json()["id"]
    forms = post_forms(client, "/drift/exceptions")
    assert forms[f"/drift/exceptions/{exc}/revoke"] - {"csrf"} == set(REASON_FIELDS)
    # and the forms' field lists (what the form handlers accept) are these same sets
    assert (ACK_FORM_FIELDS - {"csrf", "next"}, REVOKE_FORM_FIELDS - {"csrf"}, EXCEPTION_FORM_FIELDS - {"csrf"}) == (
        REASON_FIELDS, REASON_FIELDS, EXCEPTION_FIELDS)
