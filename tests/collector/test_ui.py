"""The web UI in-process: authentication, every page, escaping of hostile report content, headers."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from agent.report import Diff, DriftItem, DriftKind, Status
from tests.factory import BASE_TIME, COMMIT_A, COMMIT_B, make_report

XSS = "<script>alert(1)</script>"
EVIL_HOST = "evil01.example.com"  # host names cannot carry markup: it goes in every other field


def hostile_item() -> DriftItem:
    return DriftItem(play=f"play {XSS}", task=f"task {XSS}", role="web", module="template",
                     kind=DriftKind.CORRECTIVE, first_seen_at=BASE_TIME,
                     diffs=(Diff(path=f"/etc/{XSS}", before="a\n", after=f"a\n{XSS}\n"),))


@pytest.fixture
def fleet(send, clock):
    made = {}
    for i, (host, status, commit) in enumerate([("web01", Status.IN_SYNC, COMMIT_B),
                                                ("web02", Status.DRIFTED, COMMIT_B),
                                                ("db01", Status.FAILED, COMMIT_A)]):
        report = make_report(host, status=status, commit=commit, finished_at=BASE_TIME + timedelta(minutes=i))
        assert send(report).status_code == 201
        made[host] = report
    evil = make_report(EVIL_HOST, status=Status.DRIFTED, drift=(hostile_item(),), roles=("web", f"r{XSS}"),
                       agent_version=XSS)
    assert send(evil).status_code == 201
    made["evil"] = evil
    clock.now = BASE_TIME + timedelta(minutes=10)
    return made


PAGES = ["/", "/stale", "/drift", "/hosts/web02", "/commits", f"/commits/{COMMIT_B[:8]}",
         "/drift?task=nginx+config"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_redirect_to_login_without_auth(client, fleet, path):
    response = client.get(path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


# A form posted from the collector's own pages (the test client's base URL is http://collector.test).
FORM = {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://collector.test"}


def test_login_sets_a_strict_httponly_cookie_and_pages_accept_it(client, reader, fleet):
    token = reader["Authorization"].split()[1]
    bad = client.post("/login", content="token=nope&next=/drift", headers=FORM)
    assert bad.status_code == 401 and "Not a valid reader token" in bad.text
    ok = client.post("/login", content=f"token={token}&next=/drift", headers=FORM)
    assert ok.status_code == 303 and ok.headers["location"] == "/drift"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    assert token.lower() not in cookie  # the cookie is a session, never the token
    assert client.get("/drift").status_code == 200  # the client keeps the cookie
    assert client.post("/logout", headers=FORM).status_code == 303
    assert client.get("/drift").status_code == 303


def test_login_refuses_cross_site_posts_and_open_redirects(client, reader, fleet):
    token = reader["Authorization"].split()[1]
    cross = client.post("/login", content=f"token={token}", headers={**FORM, "Origin": "https://evil.test"})
    assert cross.status_code == 403 and "set-cookie" not in cross.headers
    away = client.post("/login", content=f"token={token}&next=//evil.test/", headers=FORM)
    assert away.headers["location"] == "/"


def test_ingest_token_cannot_log_in(client, token_for, fleet):
    response = client.post("/login", content=f"token={token_for('web01')}", headers=FORM)
    assert response.status_code == 401


@pytest.mark.parametrize("path", PAGES)
def test_pages_render_with_security_headers(client, reader, fleet, path):
    response = client.get(path, headers=reader)
    assert response.status_code == 200, response.text
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in response.text.replace('<script src="/static/ui.js" defer></script>', "")
    assert not re.search(r"\sstyle=", response.text)  # the CSP would block inline styles


def test_hostile_report_content_renders_as_text(client, reader, fleet):
    evil = fleet["evil"]
    pages = [f"/hosts/{EVIL_HOST}", f"/runs/{evil.run_id}", "/", f"/drift?task=task+{XSS}", "/drift"]
    for path in pages:
        html = client.get(path, headers=reader).text
        assert XSS not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path


def test_overview_filters_and_counts(client, reader, fleet):
    html = client.get("/?status=failed", headers=reader).text
    assert "db01" in html and "web02" not in html
    assert 'data-status="drifted"' in html
    assert "web01" in client.get("/?q=web0", headers=reader).text
    assert "db01" not in client.get("/?q=web0", headers=reader).text


def test_run_page_shows_phases_diff_and_failures(client, reader, fleet):
    html = client.get(f"/runs/{fleet['db01'].run_id}", headers=reader).text
    assert "restart nginx" in html and "service failed" in html and "a task failed" in html
    html = client.get(f"/runs/{fleet['web02'].run_id}", headers=reader).text
    assert 'class="d-add"' in html and 'class="d-del"' in html and "backend-new" in html


def test_run_page_shows_warnings_and_shortened_diffs(client, reader, send):
    item = DriftItem(play="p", task="big file", role="web", module="copy", kind=DriftKind.CORRECTIVE,
                     diffs=(Diff("/etc/big", "a", "b"),), diff_truncated=True)
    report = make_report("web09", status=Status.DRIFTED, drift=(item,), truncated=True,
                         warnings=("the report was 6000000 bytes, over its cap: each diff was cut",))
    assert send(report).status_code == 201
    html = client.get(f"/runs/{report.run_id}", headers=reader).text
    assert "Warnings" in html and "over its cap: each diff was cut" in html
    assert "diff shortened by the agent" in html


def test_run_page_of_a_watch_check_names_the_changed_and_contested_paths(client, reader, send):
    """A report with trigger watch (docs/watch.md): stored as sent, served in the API, shown on its page."""
    from agent.report import ContestedPath, Trigger, WatchInfo

    watch = WatchInfo(watched=3, directories=2, unwatched=1, unwatched_roles=("web",),
                      reason="fs.inotify.max_user_watches (8192) was reached",
                      changed=("/etc/app.conf", "/etc/<b>.conf"), changed_count=5,
                      contested=(ContestedPath("/etc/app.conf", 3),),
                      blind=("web: Set a <cron> job",), blind_count=1)
    report = make_report("web10", status=Status.DRIFTED, trigger=Trigger.WATCH, watch=watch)
    assert send(report).status_code == 201
    served = client.get(f"/api/v1/runs/{report.run_id}", headers=reader).json()["report"]
    assert served["trigger"] == "watch" and served["watch"]["changed"] == ["/etc/app.conf", "/etc/<b>.conf"]
    html = client.get(f"/runs/{report.run_id}", headers=reader).text
    assert "started by a change of <code>/etc/app.conf</code>, <code>/etc/&lt;b&gt;.conf</code> and 3 more" in html
    assert "<code>/etc/app.conf</code> (3 flips)" in html
    assert "1 managed paths not watched (fs.inotify.max_user_watches (8192) was reached)" in html
    blind = "1 blind task(s), no path to watch (scheduled checks only): web: Set a &lt;cron&gt; job"
    assert blind in html
    host = client.get("/hosts/web10", headers=reader).text  # the host page: its last report's watch
    assert "3 managed paths watched, 1 not (fs.inotify.max_user_watches (8192) was reached); " in host
    assert blind in host


def test_host_page_strip_and_commit(client, reader, fleet, send):
    html = client.get("/hosts/web02", headers=reader).text
    assert "<svg class=\"strip\"" in html and "Tune nginx workers" in html and "verified" in html


def test_unknown_things_are_404_pages(client, reader, fleet):
    for path in ("/hosts/nope", "/runs/nope", "/commits/dddddddd"):
        response = client.get(path, headers=reader)
        assert response.status_code == 404 and "text/html" in response.headers["content-type"]


def test_static_assets(client):
    css = client.get("/static/ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert client.get("/static/../app.py").status_code == 404
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert icon.text.startswith("<svg") and "<script" not in icon.text


def test_every_page_links_the_favicon_and_the_commit_list(client, reader, fleet):
    html = client.get("/drift", headers=reader).text
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html
    assert '<a href="/commits" >Commits</a>' in html.replace("  ", " ")
    commits = client.get("/commits", headers=reader).text
    assert f'href="/commits/{COMMIT_B}"' in commits and "Tune nginx workers" in commits


def test_unified_diff_classifies_lines():
    from agent.collector.ui_render import unified_diff
    kinds = [line.kind for line in unified_diff("/f", "a\nb\n", "a\nc\n")]
    assert kinds == ["meta", "meta", "hunk", "ctx", "del", "add"]
    assert unified_diff("/f", None, None) == []


def test_trusted_proxy_header_works_for_pages(engine, clock, fleet):
    from agent.collector.app import create_app
    from agent.collector.auth import ProxyAuth
    from agent.collector.context import Collector, CollectorSettings
    from tests.collector.conftest import ASGIClient

    settings = CollectorSettings(proxy=ProxyAuth("X-Remote-User", ("127.0.0.1",)))
    proxied = ASGIClient(create_app(Collector(engine, settings, now=clock)))
    try:
        page = proxied.get("/drift", headers={"X-Remote-User": "bob"})
        assert page.status_code == 200 and "bob" in page.text
        assert proxied.get("/drift").status_code == 303
    finally:
        proxied.close()
    elsewhere = ASGIClient(create_app(Collector(engine, settings, now=clock)), client_addr=("10.9.9.9", 1))
    try:  # the header counts only from the listed proxies
        assert elsewhere.get("/drift", headers={"X-Remote-User": "bob"}).status_code == 303
    finally:
        elsewhere.close()


def test_ingest_token_cannot_read_pages(client, token_for, fleet):
    response = client.get("/", headers={"Authorization": f"Bearer {token_for('web01')}"})
    assert response.status_code == 403


def test_overview_and_api_filter_by_last_seen(client, reader, fleet, clock, send):
    clock.now = BASE_TIME + timedelta(hours=2)
    assert send(make_report("fresh01", finished_at=clock.now)).status_code == 201
    recent = client.get("/?seen=1h", headers=reader).text
    assert "fresh01" in recent and "web01" not in recent
    old = client.get("/?seen=-1h", headers=reader).text
    assert "fresh01" not in old and "web01" in old
    api = client.get("/api/v1/hosts?seen=1h", headers=reader).json()
    assert [i["host"] for i in api["items"]] == ["fresh01"]
    assert client.get("/api/v1/hosts?seen=2y", headers=reader).status_code == 400


def test_a_drift_items_identity_and_reason_are_stored_served_and_shown(client, reader, send):
    twin = DriftItem(play="Web", task="Site config", role="web", module="template", kind=DriftKind.UNVERIFIABLE,
                     reason="fails only in check mode", ansible_role="sites",
                     task_path="roles/sites/tasks/site.yml:1", item="b")
    report = make_report("web07", status=Status.IN_SYNC, drift=(twin,))
    assert send(report).status_code == 201
    served = client.get(f"/api/v1/runs/{report.run_id}", headers=reader).json()["report"]["drift"][0]
    assert {k: served[k] for k in ("reason", "ansible_role", "task_path", "item")} == {
        "reason": "fails only in check mode", "ansible_role": "sites",
        "task_path": "roles/sites/tasks/site.yml:1", "item": "b"}
    page = client.get(f"/runs/{report.run_id}", headers=reader).text
    assert "Site config [b]" in page and "Ansible role sites" in page and "roles/sites/tasks/site.yml:1" in page
    assert "fails only in check mode" in page


def test_run_page_of_a_held_commit_shows_the_gate_and_the_enforced_commit(client, reader, send):
    """A run that held a new commit (docs/rollout.md): the gate, its reason and what the host enforced
    instead, with that commit's drift, are on the run page, not only in the JSON."""
    from agent.report import Enforcement, GateState, RolloutInfo

    enforced_item = DriftItem(play="p", task="Put back <motd>", role="web", module="copy",
                              kind=DriftKind.CORRECTIVE, diffs=(Diff("/etc/motd", "hand\n", "managed\n"),))
    info = RolloutInfo(wave="rest", gate=GateState.WAITING, reason="waiting: wave canary 3/5 converged",
                       policy_digest="d" * 64, plan_digest="e" * 64, enforcing_commit=COMMIT_A,
                       checked_at=BASE_TIME - timedelta(hours=1),
                       enforced=Enforcement(commit=COMMIT_A, status=Status.CORRECTED,
                                            reason="corrected 1 task", drift=(enforced_item,)))
    report = make_report("web11", status=Status.DRIFTED, commit=COMMIT_B, rollout=info)
    assert send(report).status_code == 201
    html = client.get(f"/runs/{report.run_id}", headers=reader).text
    assert '<span class="badge s-waiting">waiting</span> wave <b>rest</b>: waiting: wave canary 3/5 converged' in html
    assert f'href="/commits/{COMMIT_A}"' in html and '<span class="badge s-corrected">corrected</span> corrected 1 task' in html
    assert "Drift of the enforced commit" in html and "Put back &lt;motd&gt;" in html
    assert "not again in this run" in html and "eeeeeeeeeeee" in html
    host = client.get("/hosts/web11", headers=reader).text  # the host page: its last report's gate
    assert '<dd class="rollout"><span class="badge s-waiting">waiting</span> wave rest: waiting' in host
    assert f'enforcing <a class="sha" href="/commits/{COMMIT_A}"' in host
    plain = make_report("web12")  # no rollout block, no section
    assert send(plain).status_code == 201
    assert 'class="rollout"' not in client.get(f"/runs/{plain.run_id}", headers=reader).text
