"""The drift inbox in a real headless browser (Debian's chromium driven by Playwright), one session:
a reviewer signs in, acknowledges an item, accepts another with an expiry, the fake clock passes the expiry
and the item reads as open again, and the audit log's CSV export is downloaded and parsed.

The collector runs in-process under uvicorn on 127.0.0.1 so that its clock can be moved (Collector.now).
"""

from __future__ import annotations

import csv
import io
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from agent.collector import db, tokens
from agent.collector.app import create_app
from agent.collector.context import Collector, CollectorSettings
from agent.collector.tokens import TokenKind
from agent.report import Diff, DriftItem, DriftKind, Status, to_json
from tests.collector.test_ui_browser import console_page, shot, sign_in
from tests.factory import make_report

pytestmark = pytest.mark.browser
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def inbox(tmp_path) -> Iterator[dict[str, Any]]:
    engine = db.create(f"sqlite:///{tmp_path / 'collector.db'}")
    db.prepare(engine)
    clock = Clock()
    reviewer = tokens.create(engine, TokenKind.REVIEWER, "rita", now=NOW)[1]
    ingest = tokens.create(engine, TokenKind.INGEST, "web01.example.com", now=NOW)[1]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Collector(engine, CollectorSettings(), now=clock)),
                                           host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the collector did not start"
        time.sleep(0.05)
    drift = tuple(DriftItem(play="web servers", task=task, role="web", module="ansible.builtin.template",
                            kind=DriftKind.CORRECTIVE, ansible_role="nginx",
                            task_path="roles/nginx/tasks/main.yml:3", first_seen_at=None,
                            diffs=(Diff(path="/etc/x.conf", before="a\n", after="b\n"),))
                  for task in ("nginx config", "sysctl tune"))
    report = make_report("web01.example.com", status=Status.DRIFTED, finished_at=NOW - timedelta(minutes=5),
                         drift=drift)
    response = httpx.post(f"{url}/api/v1/reports", content=to_json(report),
                          headers={"Authorization": f"Bearer {ingest}", "Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    try:
        yield {"url": url, "reviewer": reviewer, "clock": clock, "engine": engine, "ingest": ingest}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


def test_acknowledge_accept_expire_and_export_in_a_browser(inbox):
    from playwright.sync_api import sync_playwright

    url = inbox["url"]
    with sync_playwright() as p:
        pg, errors = console_page(p, downloads=True)
        pg.goto(f"{url}/drift")
        sign_in(pg, inbox["reviewer"])
        pg.wait_for_url(f"{url}/drift")
        pg.click("a.task:text('nginx config')")
        pg.wait_for_url("**task=nginx*")
        assert "1 host(s), same diff" in pg.inner_text("main").lower()
        # acknowledge
        pg.fill("tr.item form[action$='/ack'] input[name=reason]", "looking into it")
        pg.click("tr.item form[action$='/ack'] button")
        pg.wait_for_url(f"{url}/drift")
        pg.goto(f"{url}/drift?task=nginx%20config")
        assert "acknowledged" in pg.inner_text("tr.item") and "rita" in pg.inner_text("tr.item")
        # accept the other task until a date, from the host page
        pg.goto(f"{url}/hosts/web01.example.com")
        row = pg.locator("tr.item", has_text="sysctl tune")
        row.locator("a:text('Accept…')").click()
        assert "never changes what hosts apply" in pg.inner_text("main").replace("\n", " ")
        pg.fill("input[name=owner]", "web team")
        pg.fill("input[name=ticket]", "OPS-7")
        pg.fill("input[name=expires_at]", "2026-11-23")
        pg.fill("textarea[name=reason]", "kernel vendor patch pending")
        pg.click("form.accept button[type=submit]")
        pg.wait_for_url(f"{url}/drift/exceptions")
        assert "kernel vendor patch pending" in pg.inner_text("table.exceptions")
        assert "active" in pg.inner_text("table.exceptions")
        pg.goto(f"{url}/hosts/web01.example.com")
        assert "accepted" in pg.locator("tr.item", has_text="sysctl tune").inner_text()
        shot(pg, "drift-inbox-host")
        # the fake clock passes the expiry: the item is open again, the exception expired
        inbox["clock"].now = NOW + timedelta(days=4)
        pg.goto(f"{url}/hosts/web01.example.com")
        assert "/login" in pg.url  # the 12-hour session ended with the clock too: sign in again
        pg.fill("#token", inbox["reviewer"])
        pg.click("button[type=submit]")
        pg.wait_for_url(f"{url}/hosts/web01.example.com")
        assert "open" in pg.locator("tr.item", has_text="sysctl tune").inner_text()
        pg.goto(f"{url}/drift/exceptions")
        assert "expired" in pg.inner_text("table.exceptions")
        # the audit log, exported as CSV through the page's link
        pg.goto(f"{url}/drift/audit")
        with pg.expect_download() as download:
            pg.click("a:text('CSV')")
        text = Path(download.value.path()).read_text(encoding="utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["action"], r["actor"]) for r in rows] == [("acknowledge", "rita"), ("accept", "rita")]
        assert rows[0]["reason"] == "looking into it"
        pg.context.browser.close()
    assert errors == [], f"console errors (CSP violations?): {errors}"


def test_an_exception_for_one_loop_item_of_a_task_in_a_browser(inbox):
    """The accept form offers the API's `same_loop_item` (it had no such box: an exception made in the UI
    covered every loop item of the task). Ticked, with scope task, only the starting item's loop item is
    accepted; the page says what the box means and what leaving it unticked means."""
    from playwright.sync_api import sync_playwright

    url = inbox["url"]
    drift = tuple(DriftItem(play="users", task="user accounts", role="web", module="ansible.builtin.user",
                            kind=DriftKind.CORRECTIVE, task_path="users.yml:4", first_seen_at=None, item=user)
                  for user in ("alice", "bob"))
    report = make_report("web01.example.com", status=Status.DRIFTED, finished_at=NOW - timedelta(minutes=1),
                         drift=drift)
    response = httpx.post(f"{url}/api/v1/reports", content=to_json(report),
                          headers={"Authorization": f"Bearer {inbox['ingest']}", "Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    with sync_playwright() as p:
        pg, errors = console_page(p)
        pg.goto(f"{url}/hosts/web01.example.com")
        sign_in(pg, inbox["reviewer"])
        pg.wait_for_url(f"{url}/hosts/web01.example.com")
        pg.locator("tr.item", has_text="alice").locator("a:text('Accept…')").click()
        text = " ".join(pg.inner_text("main").split())
        assert "only its loop item alice" in text and "left unticked: every loop item of the task" in text
        assert not pg.is_checked("input[name=same_loop_item]")  # as the API: absent is every loop item
        pg.check("input[name=scope][value=task]")
        pg.check("input[name=same_loop_item]")
        pg.fill("input[name=owner]", "identity team")
        pg.fill("input[name=ticket]", "OPS-9")
        pg.fill("input[name=expires_at]", "2026-12-01")
        pg.fill("textarea[name=reason]", "alice leaves at the end of the month")
        pg.click("form.accept button[type=submit]")
        pg.wait_for_url(f"{url}/drift/exceptions")
        pg.goto(f"{url}/hosts/web01.example.com")
        assert "accepted" in pg.locator("tr.item", has_text="alice").inner_text()
        assert "open" in pg.locator("tr.item", has_text="bob").inner_text()
        pg.context.browser.close()
    assert errors == [], f"console errors (CSP violations?): {errors}"
    exceptions = httpx.get(f"{url}/api/v1/drift/exceptions",
                           headers={"Authorization": f"Bearer {inbox['reviewer']}"}).json()["items"]
    assert [(e["scope"], e["scope_fields"].get("item")) for e in exceptions] == [("task", "alice")]
