"""Compliance over the drift items (figures for the fleet, roles, tasks and hosts; the daily series; the
SVG charts and their JSON twins), the `new_corrective` alert, and the backfill of items for hosts that
reported before the drift review existed. Through the real app on SQLite and PostgreSQL.

docs/drift-review.md sections 4 and 5; the pure arithmetic is tested in test_compliance.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import timedelta

import anyio
import httpx
import pytest
from sqlalchemy import delete, select

from agent.collector import compliance_store, review_backfill, review_notify, tokens
from agent.collector.alerts import parse_webhook
from agent.collector.app import create_app
from agent.collector.cli import main
from agent.collector.compliance_views import snapshot_loop
from agent.collector.context import Collector, CollectorSettings
from agent.collector.notify import Notifier
from agent.collector.tables import compliance_daily, review_hosts, review_items, webhook_deliveries
from agent.collector.tokens import TokenKind
from agent.collector.ui_render import CSP
from agent.report import DriftItem, DriftKind, Status
from tests.factory import BASE_TIME, make_report

C, R = DriftKind.CORRECTIVE, DriftKind.RECURRING
WEB = ("web01.example.com", "web02.example.com", "web03.example.com", "web04.example.com")
HOOK = parse_webhook("http://127.0.0.1:9/hook")


def drift(task: str, kind: DriftKind = C, *, role: str = "web") -> DriftItem:
    return DriftItem(play=f"{role} servers", task=task, role=role, module="ansible.builtin.template", kind=kind,
                     ansible_role="nginx", task_path="roles/nginx/tasks/main.yml:12",
                     first_seen_at=BASE_TIME - timedelta(hours=3))


@pytest.fixture
def reviewer(engine) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.create(engine, TokenKind.REVIEWER, 'rita', now=BASE_TIME)[1]}"}


@pytest.fixture
def fleet(send, clock, client, reader, reviewer):
    """web01 in sync; web02 drifts on "nginx config" (accepted by an exception); web03 drifts on "nginx
    config" and "sysctl"; web04 only ever failed (no complete check: unknown); db01 (role db) in sync."""
    clock.now = BASE_TIME + timedelta(minutes=5)
    assert send(make_report(WEB[0], status=Status.IN_SYNC)).status_code == 201
    assert send(make_report(WEB[1], status=Status.DRIFTED, drift=(drift("nginx config"),))).status_code == 201
    assert send(make_report(WEB[2], status=Status.DRIFTED,
                            drift=(drift("nginx config"), drift("sysctl", R)))).status_code == 201
    assert send(make_report(WEB[3], status=Status.FAILED, drift=())).status_code == 201
    assert send(make_report("db01.example.com", status=Status.IN_SYNC, roles=("db",))).status_code == 201
    listing = client.get(f"/api/v1/drift?group=host&host={WEB[1]}", headers=reader).json()["items"]
    body = {"scope": "item", "item_id": listing[0]["id"], "owner": "web team", "reason": "vendor patch",
            "ticket": "OPS-7", "expires_at": "2026-12-20"}
    assert client.post("/api/v1/drift/exceptions", json=body, headers=reviewer).status_code == 201


def shares(body: dict) -> tuple:
    return (body["hosts"], body["in_sync"], body["in_sync_with_exceptions"], body["unknown"])


def test_figures_for_the_fleet_a_role_a_task_and_a_host(client, reader, fleet):
    fleet_body = client.get("/api/v1/compliance", headers=reader).json()
    assert shares(fleet_body) == (4, 2, 3, 1)  # web01 and db01 in sync; web02 accepted; web04 unknown
    assert (fleet_body["share"], fleet_body["share_with_exceptions"]) == (0.5, 0.75)
    roles = {r["role"]: shares(r) for r in fleet_body["roles"]}
    assert roles == {"web": (3, 1, 2, 1), "db": (1, 1, 1, 0)}
    role = client.get("/api/v1/compliance/roles/web", headers=reader).json()
    assert shares(role) == (3, 1, 2, 1)
    tasks = {t["task"]: shares(t) for t in role["tasks"]}
    assert tasks == {"nginx config": (3, 1, 2, 1), "sysctl": (3, 2, 2, 1)}
    task = client.get("/api/v1/compliance/tasks?role=web&task=sysctl", headers=reader).json()
    assert shares(task) == (3, 2, 2, 1) and task["series"][-1]["day"] == "2026-11-20"
    calm = client.get("/api/v1/compliance/tasks?role=web&task=never%20drifts", headers=reader).json()
    assert shares(calm) == (3, 3, 3, 1)  # a task without current drift: the role's checked hosts
    host = client.get(f"/api/v1/compliance/hosts/{WEB[1]}", headers=reader).json()
    assert shares(host) == (1, 0, 1, 0)
    assert shares(client.get(f"/api/v1/compliance/hosts/{WEB[3]}", headers=reader).json()) == (0, 0, 0, 1)
    empty = client.get("/api/v1/compliance/roles/nobody", headers=reader).json()
    assert (empty["hosts"], empty["share"]) == (0, None)  # no hosts: no figure, not 100 %


@pytest.mark.parametrize(("query", "says"), [
    ("/api/v1/compliance?days=0", "days: expected a whole number from 1 to 366"),
    ("/api/v1/compliance?days=367", "days: expected a whole number"),
    ("/api/v1/compliance/tasks?role=web", "task: required"),
    ("/api/v1/compliance/roles/a%00b", "role: must not contain a NUL"),
])
def test_bad_parameters_are_a_400_naming_them(client, reader, query, says):
    response = client.get(query, headers=reader)
    assert response.status_code == 400 and says in response.json()["error"]


def test_the_daily_series_is_a_snapshot_per_day_and_reads_no_runs(client, reader, fleet, send, clock, engine):
    compliance_store.snapshot(engine, clock.now)
    assert compliance_store.snapshot(engine, clock.now) == 5  # idempotent: fleet, 2 roles, 2 tasks
    # the next day web03 converged: the day's snapshot, then the series of each scope
    clock.now = BASE_TIME + timedelta(days=1)
    assert send(make_report(WEB[2], status=Status.IN_SYNC, finished_at=clock.now)).status_code == 201
    compliance_store.snapshot(engine, clock.now)
    with engine.connect() as conn:
        days = sorted({r.day for r in conn.execute(select(compliance_daily))})
    assert days == ["2026-11-20", "2026-11-21"]
    series = client.get("/api/v1/compliance?days=7", headers=reader).json()["series"]
    assert [(p["day"], p["in_sync"], p["in_sync_with_exceptions"]) for p in series] == [
        ("2026-11-20", 2, 3), ("2026-11-21", 3, 4)]
    task = client.get("/api/v1/compliance/tasks?role=web&task=sysctl&days=7", headers=reader).json()
    # on the 21st sysctl had no current drift (no row of its own): all the role's checked hosts in sync
    assert [(p["day"], p["in_sync"]) for p in task["series"]] == [("2026-11-20", 2), ("2026-11-21", 3)]
    host = client.get(f"/api/v1/compliance/hosts/{WEB[2]}?days=7", headers=reader).json()
    assert [(p["day"], p["in_sync"]) for p in host["series"]] == [("2026-11-20", 0), ("2026-11-21", 1)]
    accepted = client.get(f"/api/v1/compliance/hosts/{WEB[1]}?days=7", headers=reader).json()
    assert [p["in_sync_with_exceptions"] for p in accepted["series"]] == [1, 1]


def test_pages_draw_inline_svg_charts_without_script_or_style(client, reader, fleet, engine, clock, collector):
    compliance_store.snapshot(engine, clock.now - timedelta(days=1))
    compliance_store.snapshot(engine, clock.now)
    for url, api in (("/compliance", "/api/v1/compliance?days=90"),
                     ("/compliance/roles/web", "/api/v1/compliance/roles/web?days=90"),
                     (f"/hosts/{WEB[2]}", f"/api/v1/compliance/hosts/{WEB[2]}"),
                     ("/drift?task=sysctl", "/api/v1/compliance/tasks?role=web&amp;task=sysctl")):
        response = client.get(url, headers=reader)
        assert response.status_code == 200, (url, response.text[:300])
        page = response.text
        assert response.headers["Content-Security-Policy"] == CSP
        svg = re.findall(r'class="compliance-chart.*?</svg>', page, re.S)
        assert svg, url
        assert all("<script" not in s and "style=" not in s and "href" not in s for s in svg)
        assert api in page, url
        # two days of snapshots draw lines; web03 first reported today: one point, no line yet
        assert ("<circle" if url.startswith("/hosts/") else "<polyline") in page, url
        assert client.get(api.replace("&amp;", "&"), headers=reader).status_code == 200
    page = client.get("/compliance", headers=reader).text
    assert "50.0 %" in page and "75.0 %" in page and 'href="/compliance/roles/web"' in page
    role_page = client.get("/compliance/roles/web", headers=reader).text
    assert 'href="/drift?task=sysctl&amp;role=web"' in role_page


# -- new corrective drift: an alert through the webhooks, once -----------------------------------------


@pytest.mark.parametrize("settings", [CollectorSettings(webhooks=(HOOK,))])
def test_new_corrective_drift_is_announced_once_unless_accepted_or_old(collector, send, clock, engine, client,
                                                                       reviewer, reader):
    notifier = Notifier(collector, httpx.AsyncClient())

    def tick() -> list[dict]:
        asyncio.run(notifier.review(clock.now))
        with engine.connect() as conn:
            rows = conn.execute(select(webhook_deliveries).where(webhook_deliveries.c.alert_kind == "new_corrective")
                                .order_by(webhook_deliveries.c.id)).all()
        return [json.loads(r.payload) for r in rows]

    clock.now = BASE_TIME + timedelta(minutes=5)
    send(make_report(WEB[0], status=Status.DRIFTED, drift=(drift("old drift"),)))
    assert tick() == []  # drift from before the first tick (an upgrade): not announced as new
    send(make_report(WEB[1], status=Status.DRIFTED, finished_at=BASE_TIME + timedelta(minutes=1),
                     drift=(drift("nginx config"), drift("sysctl", R))))
    send(make_report(WEB[2], status=Status.CORRECTED, finished_at=BASE_TIME + timedelta(minutes=1),
                     drift=(drift("nginx config"),)))  # corrected by the agent: still new drift, told
    (alert,) = tick()
    assert (alert["kind"], alert["task"], alert["hosts"]) == ("new_corrective", "nginx config", [WEB[1], WEB[2]])
    assert "new corrective drift" in alert["summary"]
    assert len(tick()) == 1  # told once
    # accepted by an exception of scope task on every host: a new episode on web03 is not announced
    (item,) = client.get(f"/api/v1/drift?group=host&host={WEB[1]}&task=nginx%20config", headers=reader).json()["items"]
    body = {"scope": "task", "item_id": item["id"], "owner": "web team", "reason": "rollout pending",
            "ticket": "OPS-9", "expires_at": "2026-12-20"}
    assert client.post("/api/v1/drift/exceptions", json=body, headers=reviewer).status_code == 201
    send(make_report(WEB[3], status=Status.DRIFTED, finished_at=BASE_TIME + timedelta(minutes=2),
                     drift=(drift("nginx config"),)))
    assert len(tick()) == 1
    with engine.connect() as conn:
        cursor = conn.execute(select(review_notify.review_cursors.c.last_id)).scalar_one()
        newest = max(conn.execute(select(review_items.c.id)).scalars())
    assert cursor == newest


# -- the backfill of hosts that reported before the drift review ----------------------------------------


def test_migrate_backfills_current_drift_from_each_hosts_last_run(send, clock, engine, client, reader, db_url,
                                                                  capsys):
    clock.now = BASE_TIME + timedelta(minutes=5)
    send(make_report(WEB[0], status=Status.DRIFTED, finished_at=BASE_TIME - timedelta(hours=1),
                     drift=(drift("nginx config"),)))
    send(make_report(WEB[0], status=Status.DRIFTED, drift=(drift("sysctl", R),)))  # its last run
    send(make_report(WEB[1], status=Status.IN_SYNC))
    send(make_report(WEB[2], status=Status.CORRECTED, drift=(drift("nginx config"),)))
    with engine.begin() as conn:  # as before migration 0007: runs and hosts, no review rows
        conn.execute(delete(review_items))
        conn.execute(delete(review_hosts))
    assert client.get("/api/v1/drift?group=host", headers=reader).json()["items"] == []
    assert main(["migrate", "--db", db_url]) == 0
    assert "drift review: current drift of 3 host(s) taken from their last run" in capsys.readouterr().out
    current = client.get("/api/v1/drift?group=host", headers=reader).json()["items"]
    assert [(i["host"], i["task"], i["state"]) for i in current] == [(WEB[0], "sysctl", "open")]
    assert current[0]["first_seen_at"] == "2026-11-20T09:00:00.000Z"  # the agent's first sighting: its age
    assert shares(client.get("/api/v1/compliance", headers=reader).json()) == (3, 2, 2, 0)
    assert review_backfill.backfill(engine) == 0  # nothing left: a second migrate adds nothing
    with engine.connect() as conn:
        assert len(conn.execute(select(review_items)).all()) == 2  # sysctl, and web03's corrected episode


def test_the_app_writes_todays_snapshot_beside_it_when_asked(engine, clock, send):
    """`serve` sets compliance_snapshot_s: the lifespan's loop writes today's rows (then every interval)."""
    clock.now = BASE_TIME + timedelta(minutes=5)
    assert send(make_report(WEB[0], status=Status.DRIFTED, drift=(drift("sysctl"),))).status_code == 201
    app = create_app(Collector(engine, CollectorSettings(compliance_snapshot_s=3600.0), now=clock))

    def fleet_rows() -> list:
        with engine.connect() as conn:
            return conn.execute(select(compliance_daily).where(compliance_daily.c.scope_kind == "fleet")).all()

    async def serve() -> list:
        async with app.router.lifespan_context(app):
            deadline = time.monotonic() + 20
            while not fleet_rows() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        return fleet_rows()

    rows = asyncio.run(serve())
    assert [(r.day, r.hosts, r.in_sync) for r in rows] == [("2026-11-20", 1, 0)]


def test_only_the_leader_writes_the_snapshot(engine, clock, send):
    """Collectors sharing a database: a follower writes no daily rows (two would rewrite the same day's
    rows at once), and takes over when the lead is free."""
    from agent.collector.leader import Leader

    clock.now = BASE_TIME + timedelta(minutes=5)
    assert send(make_report(WEB[0], status=Status.DRIFTED, drift=(drift("sysctl"),))).status_code == 201
    other = Leader(engine)
    assert other.try_lead()  # another collector leads
    follower = Collector(engine, CollectorSettings(compliance_snapshot_s=3600.0, notify_interval_s=0.05),
                         now=clock)

    def rows() -> int:
        with engine.connect() as conn:
            return len(conn.execute(select(compliance_daily)).all())

    async def run() -> tuple[int, int, bool | None]:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(snapshot_loop, follower, 3600.0)
            await anyio.sleep(0.5)
            as_follower = rows()
            other.release()  # the leader goes: the follower's next try takes the lead and writes
            deadline = time.monotonic() + 20
            while not rows() and time.monotonic() < deadline:
                await anyio.sleep(0.05)
            tasks.cancel_scope.cancel()
        return as_follower, rows(), follower.leader.leading

    try:
        as_follower, as_leader, leading = asyncio.run(run())
    finally:
        follower.leader.release()
    assert as_follower == 0 and as_leader > 0 and leading
