"""The rollout control (a section of the commit page) in a real headless browser (Debian's chromium through Playwright) against a
collector subprocess: an operator signs in, sees the plan waiting for approval with its diff, approves it
with a reason through the page's form, and the agents' endpoint then lists the plan as approved."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from agent.collector import db, tokens
from agent.collector.tokens import TokenKind
from agent.gate import plan_digest
from agent.report import GateState, RolloutInfo, Status, WaveSize, to_json
from agent.rollout import parse_policy
from tests.collector.test_ui_browser import chromium_path, console_page, shot, sign_in
from tests.factory import COMMIT_A, drift_item, make_report
from tests.live_collector import CollectorProcess

pytestmark = pytest.mark.browser
POLICY = "version: 1\nwaves:\n  - name: canary\n    groups: [canary]\n  - name: rest\napprove:\n  roles: [database]\n"
PLAN = plan_digest([("database", "pg config", "diff")])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    executable = chromium_path()
    url = f"sqlite:///{tmp_path_factory.mktemp('rollout-ui') / 'collector.db'}"
    engine = db.create(url)
    db.prepare(engine)
    now = datetime.now(UTC)
    reader = tokens.create(engine, TokenKind.READER, "ops-alice", now=now)[1]
    ingest = {h: tokens.create(engine, TokenKind.INGEST, h, now=now)[1] for h in ("db1", "db2")}
    server = CollectorProcess(url, None, "--operator", "ops-alice", "--rollout-cache", "0s").start()
    try:
        digest = parse_policy(POLICY).digest()
        auth = {"Authorization": f"Bearer {ingest['db1']}"}
        put = httpx.put(
            f"{server.url}/api/v1/rollouts/{COMMIT_A}/policy?policy={digest}",
            content=POLICY.encode(),
            headers=auth,
        )
        assert put.status_code == 201, put.text
        for host, secret in ingest.items():
            info = RolloutInfo(
                wave="rest",
                gate=GateState.WAITING,
                reason=f"waiting: approval of plan {PLAN[:12]}",
                policy_digest=digest,
                wave_sizes=(WaveSize("canary", 0), WaveSize("rest", 2)),
                plan_digest=PLAN,
            )
            report = make_report(
                host,
                status=Status.DRIFTED,
                rollout=info,
                roles=("database",),
                finished_at=now,
                drift=(drift_item("pg config", role="database"),),
            )
            sent = httpx.post(
                f"{server.url}/api/v1/reports",
                content=to_json(report),
                headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
            )
            assert sent.status_code == 201, sent.text
        yield {"url": server.url, "reader": reader, "chromium": executable, "digest": digest, "auth": auth}
    finally:
        server.stop()
        engine.dispose()


def test_an_operator_approves_a_plan_in_the_browser(site: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        pg, errors = console_page(p)
        target = f"{site['url']}/commits/{COMMIT_A}"
        pg.goto(f"{target}/rollout")  # the control's former address leads to the commit page
        assert "/login" in pg.url
        sign_in(pg, site["reader"])
        pg.wait_for_url(lambda url: url.split("#")[0] == target)
        assert "Rollout control" in pg.inner_text("#rollout") and "Running it (2)" in pg.inner_text("main")
        plan = pg.locator(f"#plan-{PLAN[:12]}")
        assert "2 host(s)" in plan.inner_text() and "/etc/nginx/conf.d/site0.conf" in plan.inner_text()
        shot(pg, "rollout-pending-approval")
        plan.locator("input[name=reason]").fill("pg change reviewed with the DBA")
        plan.locator("button[type=submit]").click()
        pg.wait_for_url(f"{target}#rollout")
        assert "No plan waits for approval" in pg.inner_text("main")
        assert "pg change reviewed with the DBA" in pg.inner_text("main")
        shot(pg, "rollout-approved")
        pg.context.browser.close()
    assert errors == [], f"console errors (CSP violations?): {errors}"
    answer = httpx.get(
        f"{site['url']}/api/v1/rollouts/{COMMIT_A}?policy={site['digest']}", headers=site["auth"]
    )
    assert answer.json()["approved_plans"] == [PLAN]
