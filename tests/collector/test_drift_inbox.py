"""The drift inbox end to end through the app: items kept at ingest (every view of current drift shows
only items that are current), and the review actions in the API and the UI with every refusal.

docs/drift-review.md; the pure lifecycle is table-tested in test_drift_review.py.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from agent.collector import tokens
from agent.collector.alerts import parse_webhook
from agent.collector.auth import ProxyAuth
from agent.collector.context import CollectorSettings
from agent.collector.notify import Notifier
from agent.collector.tables import review_audit, review_items, webhook_deliveries
from agent.collector.tokens import TokenKind
from agent.report import DriftItem, DriftKind, Phase, Status
from tests.factory import BASE_TIME, COMMIT_A, COMMIT_B, make_report

HOST = "web01.example.com"
C, R = DriftKind.CORRECTIVE, DriftKind.RECURRING
ORIGIN = {"Origin": "http://collector.test"}


def drift(task: str, kind: DriftKind = C, *, line: int = 12, item: str | None = None) -> DriftItem:
    return DriftItem(play="web servers", task=task, role="web", module="ansible.builtin.template", kind=kind,
                     ansible_role="nginx", task_path=f"roles/nginx/tasks/main.yml:{line}", item=item,
                     first_seen_at=BASE_TIME - timedelta(hours=3))


def at(minutes: int):
    return BASE_TIME + timedelta(minutes=minutes)


@pytest.fixture
def reviewer(engine) -> dict[str, str]:
    secret = tokens.create(engine, TokenKind.REVIEWER, "rita", now=BASE_TIME)[1]
    return {"Authorization": f"Bearer {secret}"}


def items(client, headers, **query):
    q = "&".join(f"{k}={v}" for k, v in {"group": "host", **query}.items())
    response = client.get(f"/api/v1/drift?{q}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


# -- ingest: what is current --------------------------------------------------------------------------


def test_corrected_drift_is_never_current_in_any_view(client, send, reader, clock):
    """The newcomer's bug, every place that shows current drift: /api/v1/drift (both groupings), the
    hosts' drift_count (overview column, sort), the host's current drift, /metrics, and the pages."""
    clock.now = at(5)
    assert send(make_report(HOST, status=Status.CORRECTED, finished_at=at(0),
                            drift=(drift("nginx config", C), drift("sysctl", R)))).status_code == 201
    assert [i["task"] for i in items(client, reader)] == ["sysctl"]
    assert [t["task"] for t in client.get("/api/v1/drift", headers=reader).json()["items"]] == ["sysctl"]
    host = client.get(f"/api/v1/hosts/{HOST}", headers=reader).json()
    assert (host["drift_count"], host["last_run_drift_count"]) == (1, 2)
    assert [d["task"] for d in host["drift"]] == ["sysctl"]
    assert client.get("/api/v1/hosts", headers=reader).json()["items"][0]["drift_count"] == 1
    assert 'gitops_drift_items{kind="corrective"}' not in client.get("/metrics", headers=reader).text
    page = client.get("/drift", headers=reader).text
    assert "sysctl" in page and "nginx config" not in page
    host_page = client.get(f"/hosts/{HOST}", headers=reader).text
    current = host_page.split("Current drift")[1].split("Drift in the last run")[0]
    assert "sysctl" in current and "nginx config" not in current


def test_an_item_records_its_lifecycle_and_a_complete_check_resolves_it(client, send, reader, clock, engine):
    clock.now = at(100)
    send(make_report(HOST, status=Status.DRIFTED, finished_at=at(0), commit=COMMIT_A, drift=(drift("a"),)))
    send(make_report(HOST, status=Status.DRIFTED, finished_at=at(30), commit=COMMIT_B, drift=(drift("a"),)))
    (item,) = items(client, reader)
    assert (item["state"], item["checks"], item["commit_count"], item["commits"]) == (
        "open", 2, 2, [COMMIT_A, COMMIT_B])
    assert item["first_seen_at"] == "2026-11-20T09:00:00.000Z"  # the agent's first sighting
    assert item["last_seen_at"] == "2026-11-20T12:29:18.000Z"  # the newest run's start
    assert item["age_s"] == (at(100) - (BASE_TIME - timedelta(hours=3))).total_seconds()
    # a failed run (partial) lists nothing: proves nothing, resolves nothing
    send(make_report(HOST, status=Status.FAILED, finished_at=at(60), drift=()))
    assert len(items(client, reader)) == 1
    # a late report (started before the newest complete check) never resolves
    send(make_report(HOST, status=Status.IN_SYNC, finished_at=at(10), drift=()))
    assert len(items(client, reader)) == 1
    send(make_report(HOST, status=Status.IN_SYNC, finished_at=at(90), drift=()))
    assert items(client, reader) == []
    with engine.connect() as conn:
        row = conn.execute(select(review_items)).one()
    assert (row.state, row.resolution, row.checks) == ("resolved", "absent", 2)


def test_twins_stay_two_items_and_phase_reached_matters(client, send, reader, clock):
    clock.now = at(5)
    twins = (drift("restart", line=12), drift("restart", line=40))
    send(make_report(HOST, status=Status.DRIFTED, finished_at=at(0), drift=twins))
    assert sorted(i["nth"] for i in items(client, reader)) == [0, 1]
    # an unfinished check (phase not done) is partial: it resolves nothing
    send(make_report(HOST, status=Status.DRIFTED, finished_at=at(1), drift=twins[:1], phase_reached=Phase.CHECK))
    assert len(items(client, reader)) == 2


# -- review actions: API -----------------------------------------------------------------------------


@pytest.fixture
def one_item(send, clock, client, reader):
    clock.now = at(5)
    send(make_report(HOST, status=Status.DRIFTED, finished_at=at(0), drift=(drift("nginx config"),)))
    (item,) = items(client, reader)
    return item


def test_acknowledge_and_reopen_through_the_api_are_audited(client, reviewer, reader, one_item):
    url = f"/api/v1/drift/items/{one_item['id']}"
    response = client.post(f"{url}/ack", json={"reason": "on it, OPS-12"}, headers=reviewer)
    assert response.status_code == 200, response.text
    assert (response.json()["state"], response.json()["acknowledged_by"]) == ("acknowledged", "rita")
    assert items(client, reader, state="acknowledged")[0]["id"] == one_item["id"]
    assert client.post(f"{url}/unack", json={"reason": "not me"}, headers=reviewer).json()["state"] == "open"
    audit = client.get("/api/v1/drift/audit", headers=reader).json()
    assert [(a["actor"], a["action"], a["reason"]) for a in audit["items"]] == [
        ("rita", "unacknowledge", "not me"), ("rita", "acknowledge", "on it, OPS-12")]


@pytest.mark.parametrize(("who", "body", "status", "says"), [
    ("reader", {"reason": "x"}, 403, "reviewer"),
    ("nobody", {"reason": "x"}, 401, "token"),
    ("reviewer", {}, 422, "reason"),
    ("reviewer", {"reason": "   "}, 422, "reason"),
])
def test_acknowledge_refusals(client, reviewer, reader, one_item, who, body, status, says):
    headers = {"reader": reader, "reviewer": reviewer, "nobody": {}}[who]
    response = client.post(f"/api/v1/drift/items/{one_item['id']}/ack", json=body, headers=headers)
    assert response.status_code == status and says in response.json()["error"]
    assert items(client, reader)[0]["state"] == "open"


def test_acknowledging_a_resolved_or_missing_item_is_refused(client, send, reviewer, one_item):
    send(make_report(HOST, status=Status.IN_SYNC, finished_at=at(1), drift=()))
    resolved = client.post(f"/api/v1/drift/items/{one_item['id']}/ack", json={"reason": "x"}, headers=reviewer)
    assert resolved.status_code == 409 and "resolved" in resolved.json()["error"]
    missing = client.post("/api/v1/drift/items/999999/ack", json={"reason": "x"}, headers=reviewer)
    assert missing.status_code == 404
    assert client.post("/api/v1/drift/items/1/explode", json={}, headers=reviewer).status_code == 404


def exception_body(item_id: int, **changes):
    return {"scope": "item", "item_id": item_id, "owner": "web team", "reason": "vendor patch",
            "ticket": "https://tickets.example.com/OPS-7", "expires_at": "2026-12-20", **changes}


@pytest.mark.parametrize(("changes", "says"), [
    ({"reason": ""}, "reason: required"),
    ({"owner": None}, "owner: required"),
    ({"ticket": " "}, "ticket: required"),
    ({"expires_at": "2026-11-01"}, "expires_at: must be in the future"),
    ({"expires_at": "2030-01-01"}, "expires_at: at most 365 days"),
    ({"expires_at": "soon"}, "expires_at"),
    ({"scope": "fleet"}, "scope"),
    ({"scope": "role"}, "role: required"),
    ({"scope": "task", "host_pattern": "web-*", "host_group": "web"}, "not both"),
])
def test_exception_refusals_name_the_field(client, reviewer, reader, one_item, changes, says):
    response = client.post("/api/v1/drift/exceptions", json=exception_body(one_item["id"], **changes),
                           headers=reviewer)
    assert response.status_code == 422, response.text
    assert says in response.json()["error"]
    assert client.get("/api/v1/drift/exceptions", headers=reader).json()["total"] == 0


def test_a_reader_cannot_accept(client, reader, one_item):
    response = client.post("/api/v1/drift/exceptions", json=exception_body(one_item["id"]), headers=reader)
    assert response.status_code == 403


def test_exception_scopes_accept_and_expiry_reopens(client, send, reviewer, reader, clock, engine):
    """item, task on hosts by pattern, task by group, role across the fleet; expiry reopens (fake clock)."""
    clock.now = at(5)
    for host, roles in (("web-1", ("web",)), ("web-2", ("web",)), ("db-1", ("db",))):
        send(make_report(host, status=Status.DRIFTED, finished_at=at(0), roles=roles,
                         drift=(drift("nginx config"), drift("users", item="alice"))))
    by = {(i["host"], i["task"]): i for i in items(client, reader)}
    task_exc = client.post("/api/v1/drift/exceptions", headers=reviewer, json=exception_body(
        by[("web-1", "nginx config")]["id"], scope="task", host_pattern="web-*"))
    assert task_exc.status_code == 201, task_exc.text
    states = {(i["host"], i["task"]): i["state"] for i in items(client, reader)}
    assert states[("web-1", "nginx config")] == states[("web-2", "nginx config")] == "accepted"
    assert states[("db-1", "nginx config")] == "open" and states[("web-1", "users")] == "open"
    group_exc = client.post("/api/v1/drift/exceptions", headers=reviewer, json=exception_body(
        by[("db-1", "users")]["id"], scope="task", host_group="db", expires_at="2026-11-25T00:00:00Z"))
    assert group_exc.status_code == 201
    assert {i["host"] for i in items(client, reader, state="accepted")} == {"web-1", "web-2", "db-1"}
    role_exc = client.post("/api/v1/drift/exceptions", headers=reviewer,
                           json=exception_body(None, scope="role", role="nginx", expires_at="2026-12-01"))
    assert role_exc.status_code == 201
    assert items(client, reader, state="open") == []
    # a new episode on a new host of the pattern is accepted at once (matching is evaluated)
    send(make_report("web-3", status=Status.DRIFTED, finished_at=at(1), drift=(drift("nginx config"),)))
    assert {i["host"] for i in items(client, reader, task="nginx%20config", state="open")} == set()
    # the role exception is revoked: its items go back to open (the others still hold theirs)
    revoke = client.post(f"/api/v1/drift/exceptions/{role_exc.json()['id']}/revoke", headers=reviewer,
                         json={"reason": "too broad"})
    assert revoke.json()["state"] == "revoked"
    assert {(i["host"], i["task"]) for i in items(client, reader, state="open")} == {
        ("web-1", "users"), ("web-2", "users"), ("db-1", "nginx config")}
    # the clock passes the group exception's expiry: db-1's users item reads as open again
    clock.now = BASE_TIME + timedelta(days=5, hours=1)
    assert ("db-1", "users") in {(i["host"], i["task"]) for i in items(client, reader, state="open")}
    exceptions = {e["id"]: e["state"] for e in client.get("/api/v1/drift/exceptions", headers=reader).json()["items"]}
    assert exceptions == {task_exc.json()["id"]: "active", group_exc.json()["id"]: "expired",
                          role_exc.json()["id"]: "revoked"}
    with engine.connect() as conn:
        actions = [r.action for r in conn.execute(select(review_audit).order_by(review_audit.c.id))]
    assert actions == ["accept", "accept", "accept", "revoke"]


def test_the_audit_log_exports_as_csv_and_json_lines(client, reviewer, reader, one_item):
    client.post(f"/api/v1/drift/items/{one_item['id']}/ack", json={"reason": "on it, \"quoted\""},
                headers=reviewer)
    client.post("/api/v1/drift/exceptions", json=exception_body(one_item["id"]), headers=reviewer)
    text = client.get("/api/v1/drift/audit?format=csv", headers=reader).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["action"], r["actor"]) for r in rows] == [("acknowledge", "rita"), ("accept", "rita")]
    assert rows[0]["reason"] == 'on it, "quoted"'
    lines = client.get("/api/v1/drift/audit?format=jsonl", headers=reader).text.splitlines()
    assert [json.loads(line)["details"].get("owner") for line in lines] == [None, "web team"]
    assert client.get("/api/v1/drift/audit?format=csv").status_code == 401


# -- review actions: UI forms (CSRF) -------------------------------------------------------------------


def login(client, headers) -> str:
    """Sign in with the bearer token's secret; returns the CSRF token the pages carry."""
    secret = headers["Authorization"].split()[1]
    response = client.post("/login", data={"token": secret, "next": "/drift"}, headers=ORIGIN)
    assert response.status_code == 303, response.text
    client._client.cookies.set("gitops_session", response.cookies["gitops_session"])
    page = client.get("/drift?task=nginx%20config").text
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    return found.group(1) if found else ""


def test_ui_acknowledge_needs_the_csrf_token_and_the_origin(client, reviewer, reader, one_item):
    csrf = login(client, reviewer)
    assert csrf
    url = f"/drift/items/{one_item['id']}/ack"
    missing = client.post(url, data={"reason": "x"}, headers=ORIGIN)
    assert missing.status_code == 403 and "CSRF" in missing.text
    wrong = client.post(url, data={"reason": "x", "csrf": "0" * 64}, headers=ORIGIN)
    assert wrong.status_code == 403
    cross = client.post(url, data={"reason": "x", "csrf": csrf}, headers={"Origin": "http://evil.test"})
    assert cross.status_code == 403
    no_reason = client.post(url, data={"csrf": csrf}, headers=ORIGIN)
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    ok = client.post(url, data={"reason": "looking", "csrf": csrf, "next": "/drift"}, headers=ORIGIN)
    assert ok.status_code == 303 and ok.headers["location"] == "/drift"
    assert items(client, reader)[0]["state"] == "acknowledged"


def test_ui_readers_get_no_forms_and_cannot_post(client, reader, one_item):
    assert login(client, reader) == ""
    page = client.get(f"/hosts/{HOST}").text
    assert "Acknowledge" not in page and "nginx config" in page
    response = client.post(f"/drift/items/{one_item['id']}/ack", data={"reason": "x", "csrf": "x"},
                           headers=ORIGIN)
    assert response.status_code == 403
    assert client.get(f"/drift/accept?item={one_item['id']}").status_code == 403


def test_ui_accept_form_says_exceptions_never_change_what_hosts_apply(client, reviewer, reader, one_item):
    csrf = login(client, reviewer)
    form = client.get(f"/drift/accept?item={one_item['id']}").text
    assert "never changes what hosts apply" in form.replace("\n", " ")
    fields = {**exception_body(one_item["id"]), "csrf": csrf}
    past = client.post("/drift/exceptions", data={**fields, "expires_at": "2026-01-01"}, headers=ORIGIN)
    assert past.status_code == 422 and "expires_at" in past.text
    assert client.post("/drift/exceptions", data=fields, headers=ORIGIN).status_code == 303
    assert items(client, reader)[0]["state"] == "accepted"
    page = client.get("/drift/exceptions").text
    assert "vendor patch" in page and "never changes what hosts apply" in page.replace("\n", " ")


@pytest.mark.parametrize("settings", [CollectorSettings(proxy=ProxyAuth("X-Forwarded-User"),
                                                        reviewers=("pat",))])
def test_proxy_users_named_reviewers_may_act_others_only_read(client, one_item):
    url = f"/api/v1/drift/items/{one_item['id']}/ack"
    assert client.post(url, json={"reason": "x"}, headers={"X-Forwarded-User": "sam"}).status_code == 403
    response = client.post(url, json={"reason": "x"}, headers={"X-Forwarded-User": "pat"})
    assert response.status_code == 200 and response.json()["acknowledged_by"] == "pat"


# -- the notifier's tick: expiry written down, exception alerts once each ----------------------------


@pytest.mark.parametrize("settings", [CollectorSettings(webhooks=(parse_webhook("http://127.0.0.1:9/hook"),))])
def test_the_notifier_reopens_expired_items_and_alerts_once(client, collector, reviewer, one_item, clock, engine):
    created = client.post("/api/v1/drift/exceptions", headers=reviewer,
                          json=exception_body(one_item["id"], expires_at="2026-11-25"))
    assert created.status_code == 201
    notifier = Notifier(collector, httpx.AsyncClient())

    def tick() -> list[str]:
        asyncio.run(notifier.review(clock.now))
        with engine.connect() as conn:
            return [r.alert_kind for r in conn.execute(select(webhook_deliveries).order_by(webhook_deliveries.c.id))]

    assert tick() == ["exc_expiring"]  # 4.5 days left: within 7 days, told once
    assert tick() == ["exc_expiring"]
    clock.now = BASE_TIME + timedelta(days=6)
    assert tick() == ["exc_expiring", "exc_expired"]
    assert tick() == ["exc_expiring", "exc_expired"]
    with engine.connect() as conn:
        row = conn.execute(select(review_items)).one()
        actions = [r.action for r in conn.execute(select(review_audit).order_by(review_audit.c.id))]
    assert (row.state, row.accepted_by) == ("open", None)
    assert actions == ["accept", "expire"]
    with engine.connect() as conn:
        payload = json.loads(conn.execute(select(webhook_deliveries.c.payload)).scalars().first())
    assert payload["hosts"] == [HOST] and "exception #" in payload["task"]
