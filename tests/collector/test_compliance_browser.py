"""Compliance charts in a real headless browser (Debian's chromium driven by Playwright): the fleet page,
a role's page and a host's page draw their inline SVG charts under the collector's CSP (no console error:
a CSP refusal would be one), and the dashed line (in sync with exceptions) leaves the solid one once an
exception accepts the drift. The collector of test_drift_inbox_browser (in-process, on 127.0.0.1, fake
clock); the day before gets a snapshot so that lines, not single points, are drawn.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from agent.collector import compliance_store
from tests.collector.test_drift_inbox_browser import NOW, inbox  # noqa: F401 (the fixture)
from tests.collector.test_ui_browser import console_page, shot, sign_in

pytestmark = pytest.mark.browser


def test_compliance_charts_render_under_the_csp(inbox):  # noqa: F811 (the fixture)
    from playwright.sync_api import sync_playwright

    url, engine = inbox["url"], inbox["engine"]
    compliance_store.snapshot(engine, NOW - timedelta(days=1))
    with sync_playwright() as p:
        pg, errors = console_page(p)
        pg.goto(f"{url}/compliance")
        sign_in(pg, inbox["reviewer"])
        pg.wait_for_url(f"{url}/compliance")
        assert "0.0 %" in pg.inner_text("section.compliance-fleet h2")  # web01 drifts on two tasks
        box = pg.locator("section.compliance-fleet svg").bounding_box()
        assert box is not None and box["width"] == 360 and box["height"] == 80
        assert pg.locator("section.compliance-fleet polyline.in-sync").count() == 1
        shot(pg, "compliance-fleet")
        pg.click("table.compliance-roles a:text('web')")
        pg.wait_for_url(f"{url}/compliance/roles/web")
        assert pg.locator("table.compliance-tasks tr.compliance-task").count() == 2
        # accept both tasks of role web: with exceptions, the host is in sync now
        body = {"scope": "role", "role": "web", "role_kind": "playbook", "owner": "web team",
                "reason": "kernel vendor patch", "ticket": "OPS-7", "expires_at": "2026-12-20"}
        response = httpx.post(f"{url}/api/v1/drift/exceptions", json=body,
                              headers={"Authorization": f"Bearer {inbox['reviewer']}"})
        assert response.status_code == 201, response.text
        pg.goto(f"{url}/hosts/web01.example.com")
        assert pg.locator("section.compliance-host svg circle").count() >= 1
        pg.goto(f"{url}/compliance")
        assert "100.0 %" in pg.inner_text("section.compliance-fleet h2")
        solid = pg.get_attribute("section.compliance-fleet polyline.in-sync", "points")
        dashed = pg.get_attribute("section.compliance-fleet polyline.with-exceptions", "points")
        assert solid and dashed and solid.split()[-1] != dashed.split()[-1]  # today: 0 % vs 100 %
        shot(pg, "compliance-accepted")
        pg.context.browser.close()
    assert errors == []
