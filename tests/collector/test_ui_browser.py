"""The web UI in a real headless browser: Debian's chromium driven by Playwright, against a collector
subprocess on 127.0.0.1 seeded with a realistic fleet through the ingest API. Screenshots of every page
go to test-artifacts/. Skipped only when chromium is missing and CI is unset."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.collector import db, tokens
from agent.collector.tokens import TokenKind
from tests.collector import ui_fleet
from tests.collector.test_ui_notify import Receiver
from tests.live_collector import CollectorProcess

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str:
    path = os.environ.get("GITOPS_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing under CI: browser tests must run (see .ci/system-deps)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def console_page(playwright: Any, *, downloads: bool = False) -> tuple[Any, list[str]]:
    """A page of a fresh headless Chromium (1360x900) and the list its console errors are added to (a CSP
    violation is one): the set-up every browser test shares. Closed with the `sync_playwright()` block."""
    browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
    page = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=downloads).new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return page, errors


def sign_in(page: Any, token: str) -> None:
    """Fill the login form the page was sent to and submit it."""
    page.fill("#token", token)
    page.click("button[type=submit]")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    executable = chromium_path()
    url = f"sqlite:///{tmp_path_factory.mktemp('ui') / 'collector.db'}"
    engine = db.create(url)
    db.prepare(engine)
    reader = tokens.create(engine, TokenKind.READER, "ops-alice", now=ui_fleet.datetime.now(ui_fleet.UTC))[1]
    receiver = Receiver()
    long_hook = f"{receiver.url}/services/T0123ABCDE/B0456FGHIJ/{'k' * 48}?channel=ops-fleet-alerts"
    server = CollectorProcess(url, None, "--stale-grace", "1s", "--notify-interval", "1s",
                              "--alert-group-wait", "1s", "--alert-group-interval", "2s",
                              "--webhook", f"{receiver.url}/generic",
                              "--webhook", f"{receiver.url}/slack,slack",
                              "--webhook", f"{long_hook},json").start()
    try:
        latest = ui_fleet.seed(engine, server.url)
        time.sleep(3.5)  # the legacy hosts promised a report every second: now they are stale
        yield {"url": server.url, "reader": reader, "latest": latest, "chromium": executable,
               "receiver": receiver}
    finally:
        server.stop()
        receiver.close()
        engine.dispose()


@pytest.fixture(scope="module")
def browser(site: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=site["chromium"], args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, site: dict[str, Any]) -> Iterator[Any]:
    """A logged-in page (through the login form); any JavaScript dialog fails the test."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = context.new_page()
    dialogs: list[str] = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(site["url"] + "/")
    assert "/login" in pg.url
    pg.fill("#token", site["reader"])
    pg.click("button[type=submit]")
    pg.wait_for_url(site["url"] + "/")
    yield pg
    context.close()
    assert dialogs == [], f"a dialog fired: {dialogs}"
    assert errors == [], f"console errors (CSP violations?): {errors}"


def shot(pg: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_login_form(browser, site):
    context = browser.new_context(viewport={"width": 1360, "height": 700})
    pg = context.new_page()
    pg.goto(site["url"] + "/drift")
    assert "/login?next=" in pg.url
    pg.fill("#token", "not-a-token")
    pg.click("button[type=submit]")
    assert "Not a valid reader token" in pg.inner_text("[role=alert]")
    shot(pg, "login")
    pg.fill("#token", site["reader"])
    pg.click("button[type=submit]")
    pg.wait_for_url(site["url"] + "/drift")
    context.close()


def test_overview_filters(page, site):
    shot(page, "overview")
    assert "30 hosts" in page.inner_text("h1")
    page.click("a.chip[data-status=failed]")
    page.wait_for_url("**status=failed**")
    assert page.locator("table.hosts tbody tr").count() == 1
    assert "web11" in page.inner_text("table.hosts")
    page.select_option("select[name=status]", "drifted")  # ui.js submits the form on change
    page.wait_for_url("**status=drifted**")
    rows = page.locator("table.hosts tbody tr")
    assert rows.count() == 6
    page.goto(site["url"] + "/?q=worker&sort=last_seen&order=desc")
    assert page.locator("table.hosts tbody tr").count() == 8
    page.goto(site["url"] + "/?role=db")
    assert page.locator("table.hosts tbody tr").count() == 4
    page.goto(site["url"] + f"/?commit={ui_fleet.OLD[:7]}")
    assert "lb01" in page.inner_text("table.hosts")
    page.goto(site["url"] + "/?limit=10")
    page.click("a[rel=next]")
    assert "11\u201320 of 30" in page.inner_text(".pager")


def test_host_page(page, site):
    page.click("text=web03.dc1.example.com")
    page.wait_for_url("**/hosts/web03.dc1.example.com")
    assert page.locator("svg.strip rect").count() == 7
    assert "Raise nginx worker connections" in page.inner_text("body")
    assert page.locator("details.drift").count() == 2
    shot(page, "host")
    page.goto(site["url"] + "/hosts/lb01.dc1.example.com")
    assert "OPS-1234" in page.inner_text(".paused-note")


def test_run_page_diffs(page, site):
    run_id = site["latest"]["web03.dc1.example.com"].run_id
    page.goto(f"{site['url']}/runs/{run_id}")
    assert page.locator(".d-add").first.inner_text() == "+worker_processes auto;"
    colour = page.eval_on_selector(".d-add", "e => getComputedStyle(e).backgroundColor")
    assert colour == "rgb(230, 255, 236)"  # the stylesheet loaded under the CSP
    shot(page, "run")
    failed = site["latest"]["web11.dc1.example.com"].run_id
    page.goto(f"{site['url']}/runs/{failed}")
    assert "restart nginx" in page.inner_text("ul.failed")
    shot(page, "run-failed")


def test_drift_by_task(page, site):
    page.goto(site["url"] + "/drift")
    shot(page, "drift")
    row = page.locator("table.tasks tr", has_text="sysctl: tune network")
    assert row.locator("td.num").inner_text() == "5"
    row.locator("a.task").click()
    page.wait_for_url("**task=sysctl**")
    assert page.locator("table.hosts tbody tr").count() == 5
    shot(page, "drift-task")


def test_commit_rollout(page, site):
    page.goto(site["url"] + "/")
    page.locator(f"a.sha[href='/commits/{ui_fleet.NEW}']").first.click()
    page.wait_for_url(f"**/commits/{ui_fleet.NEW}")
    text = page.inner_text(".rollout")
    assert "20 of 30 run it" in text and "10 not reached" in text
    shot(page, "commit")
    page.click(".tabs a >> nth=1")
    page.wait_for_url("**hosts=not_reached**")
    assert "lb01" in page.inner_text("table.hosts")


def test_stale_hosts(page, site):
    page.goto(site["url"] + "/stale")
    assert page.locator("table.hosts tbody tr").count() == 3
    shot(page, "stale")


def test_xss_stays_inert(page, site):
    evil_run = site["latest"][ui_fleet.EVIL_HOST].run_id
    for path in ("/?q=evil", f"/hosts/{ui_fleet.EVIL_HOST}", f"/runs/{evil_run}", "/drift",
                 f"/commits/{ui_fleet.EVIL_COMMIT}"):
        page.goto(site["url"] + path)
        page.wait_for_load_state("load")
        assert page.evaluate("document.querySelectorAll('main script, main img').length") == 0
    assert ui_fleet.XSS in page.inner_text("main")  # shown as text
    shot(page, "xss")


def test_notifications_page(page, site):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(b.get("kind") == "stale" for b in site["receiver"].bodies):
        time.sleep(0.5)
    kinds = {b["kind"] for b in site["receiver"].bodies if "kind" in b}
    assert {"drifting", "failing", "stale"} <= kinds
    page.goto(site["url"] + "/webhooks")
    assert page.locator("table.deliveries tbody tr .w-delivered").count() >= 6
    assert ui_fleet.XSS in page.inner_text("table.deliveries")  # the hostile task name, as text
    shot(page, "webhooks")


def test_status_sorts_by_severity_and_drift_first_sorts_descending(page, site):
    page.click("table.hosts th a:has-text('Status')")
    page.wait_for_url("**sort=status**")
    badges = page.locator("table.hosts tbody tr td:nth-child(2) .badge:not(.s-stale)").all_inner_texts()
    severity = ["failed", "error", "drifted", "paused", "corrected", "in sync"]
    assert badges[:3] == ["failed", "error", "drifted"]
    assert badges == sorted(badges, key=severity.index)
    shot(page, "overview-by-status")
    page.click("table.hosts th a:has-text('Drift')")
    page.wait_for_url("**sort=drift**")
    assert "order=desc" in page.url
    drift = [int(n) for n in page.locator("table.hosts tbody tr td.num").all_inner_texts()]
    assert drift[0] == max(drift) == 2 and drift == sorted(drift, reverse=True)
    page.click("table.hosts th a:has-text('Drift')")  # the second click flips it
    page.wait_for_url("**order=asc**")


def test_diff_sides_are_labelled(page, site):
    run_id = site["latest"]["web03.dc1.example.com"].run_id
    page.goto(f"{site['url']}/runs/{run_id}")
    caption = page.locator("figure.diff figcaption").first
    assert caption.locator(".sides").inner_text() == "\u2212 host now + Git"
    meta = page.locator("figure.diff pre .d-meta").all_inner_texts()[:2]
    assert meta == ["--- /etc/nginx/nginx.conf (host now)", "+++ /etc/nginx/nginx.conf (Git)"]
    assert page.locator("figure.diff pre .d-del").first.inner_text() == "-worker_processes 2;"
    caption.screenshot(path=str(ARTIFACTS / "diff-sides.png"))


def test_commits_page_lists_rollouts_newest_first(page, site):
    page.click("header nav a:has-text('Commits')")
    page.wait_for_url(site["url"] + "/commits")
    rows = page.locator("table.commits tbody tr")
    assert rows.count() == 3
    first = [c.strip() for c in rows.nth(0).locator("td").all_inner_texts()]
    newest = rows.nth(1).locator("td").all_inner_texts()  # the hostile host's commit came last
    assert first[0] == ui_fleet.EVIL_COMMIT[:10]
    assert newest[0] == ui_fleet.NEW[:10] and newest[4] == "20 of 30" and newest[5] == "15"
    assert page.get_attribute("header nav a[href='/commits']", "aria-current") == "page"
    shot(page, "commits")
    rows.nth(1).locator("a.sha").click()
    page.wait_for_url(f"**/commits/{ui_fleet.NEW}")


def test_favicon_is_served_under_the_csp(page, site):
    href = page.get_attribute("link[rel=icon]", "href")
    assert href == "/static/favicon.svg"
    response = page.request.get(site["url"] + href)
    assert response.status == 200 and response.headers["content-type"] == "image/svg+xml"
    assert response.body().startswith(b"<svg")
    loaded = page.evaluate("""async () => { const img = new Image(); img.src = '/static/favicon.svg';
        await img.decode(); return img.naturalWidth > 0; }""")
    assert loaded  # img-src 'self' lets it load; the page fixture fails on any CSP console error


def test_pages_fit_an_800px_window(browser, site):
    context = browser.new_context(viewport={"width": 800, "height": 900})
    pg = context.new_page()
    pg.goto(site["url"] + "/login")
    pg.fill("#token", site["reader"])
    pg.click("button[type=submit]")
    pg.wait_for_url(site["url"] + "/")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(site["receiver"].bodies) < 6:
        time.sleep(0.5)
    for path in ("/webhooks", "/commits", "/drift", "/"):
        pg.goto(site["url"] + path)
        width = pg.evaluate("document.documentElement.scrollWidth")
        wide = pg.evaluate("""() => { const out = [], w = document.documentElement.clientWidth;
            const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
            while (walk.nextNode() && out.length < 5) { const r = document.createRange();
              r.selectNodeContents(walk.currentNode); const b = r.getBoundingClientRect();
              if (b.right > w) out.push(walk.currentNode.parentElement.tagName + ': '
                                        + walk.currentNode.textContent.slice(0, 40) + ' ' + Math.round(b.right)); }
            return out; }""")
        shot(pg, "narrow" + path.replace("/", "-"))
        assert width <= 800, f"{path} is {width}px wide in an 800px window: {wide}"
    pg.goto(site["url"] + "/webhooks")
    shot(pg, "webhooks-800px")
    pg.screenshot(path=str(ARTIFACTS / "webhooks-800px-top.png"))  # the first screenful, as seen
    context.close()
