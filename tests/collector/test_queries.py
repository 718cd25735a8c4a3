"""The query API over a small fleet: filters, pagination, drift views, commit rollout, staleness, auth."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest

from agent.collector import store, tokens
from agent.collector.auth import ProxyAuth
from agent.collector.context import CollectorSettings
from agent.report import DriftKind, Status
from tests.factory import BASE_TIME, COMMIT_A, COMMIT_B, drift_item, make_report

FLEET = {
    "web01": (Status.IN_SYNC, COMMIT_B, ("web",), ()),
    "web02": (Status.DRIFTED, COMMIT_B, ("web",), ("nginx config",)),
    "web03": (Status.DRIFTED, COMMIT_A, ("web",), ("nginx config", "sysctl")),
    "db01": (Status.FAILED, COMMIT_B, ("db",), ()),
    "db02": (Status.CORRECTED, COMMIT_A, ("db", "backup"), ("pg_hba",)),
}


@pytest.fixture
def fleet(send, clock):
    reports = {}
    for i, (host, (status, commit, roles, tasks)) in enumerate(FLEET.items()):
        drift = tuple(drift_item(t, role=roles[0], kind=DriftKind.CORRECTIVE if t != "sysctl"
                                 else DriftKind.RECURRING) for t in tasks)
        clock.now = BASE_TIME + timedelta(minutes=i)
        report = make_report(host, status=status, commit=commit, roles=roles, drift=drift,
                             finished_at=BASE_TIME + timedelta(minutes=i))
        assert send(report).status_code == 201
        reports[host] = report
    # an older run of web02, on the old commit, in sync
    old = make_report("web02", commit=COMMIT_A, finished_at=BASE_TIME - timedelta(days=1))
    assert send(old).status_code == 201
    reports["web02-old"] = old
    clock.now = BASE_TIME + timedelta(minutes=10)
    return reports


def names(response):
    assert response.status_code == 200, response.text
    return [item["host"] for item in response.json()["items"]]


def test_hosts_lists_every_host_with_its_state(client, reader, fleet):
    body = client.get("/api/v1/hosts", headers=reader).json()
    assert body["total"] == 5
    web03 = next(i for i in body["items"] if i["host"] == "web03")
    assert (web03["status"], web03["drift_count"], web03["commit"], web03["stale"], web03["roles"]) == (
        "drifted", 2, COMMIT_A, False, ["web"])
    assert web03["last_seen_at"] == "2026-11-20T12:02:00.000Z"
    assert body["counts"] == {"total": 5, "in_sync": 1, "drifted": 2, "failed": 1, "corrected": 1, "stale": 0}
    filtered = client.get("/api/v1/hosts?status=failed", headers=reader).json()
    assert filtered["total"] == 1 and filtered["counts"]["total"] == 5  # counts are the whole fleet


@pytest.mark.parametrize(("query", "expected"), [
    ("status=drifted", ["web02", "web03"]),
    ("status=failed,corrected", ["db01", "db02"]),
    ("role=backup", ["db02"]),
    (f"commit={COMMIT_A[:8]}", ["db02", "web03"]),
    ("q=web0", ["web01", "web02", "web03"]),
    ("sort=drift&order=desc&limit=2", ["web03", "web02"]),  # db02 corrected its drift: none current
])
def test_hosts_filters(client, reader, fleet, query, expected):
    assert names(client.get(f"/api/v1/hosts?{query}", headers=reader)) == expected


def test_hosts_pagination(client, reader, fleet):
    first = client.get("/api/v1/hosts?limit=2", headers=reader).json()
    assert (len(first["items"]), first["next_offset"]) == (2, 2)
    last = client.get("/api/v1/hosts?limit=2&offset=4", headers=reader).json()
    assert (len(last["items"]), last["next_offset"]) == (1, None)


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "offset=-1", "stale=maybe", "sort=color",
                                   "order=up"])
def test_bad_parameters_are_400_naming_them(client, reader, fleet, query):
    response = client.get(f"/api/v1/hosts?{query}", headers=reader)
    assert response.status_code == 400
    assert response.json()["error"].startswith(query.split("=")[0])


def test_stale_hosts(client, reader, fleet, clock):
    # stale = interval 1800 + splay 300 + grace 600 after the last contact: web01 at +0 min, web03 at +2,
    # db01 at +3, db02 and web02 at +4 (web02's late old run counts as contact)
    clock.now = BASE_TIME + timedelta(seconds=1800 + 300 + 600 + 150)
    assert names(client.get("/api/v1/hosts?stale=true", headers=reader)) == ["web01", "web03"]
    assert names(client.get("/api/v1/hosts?stale=false", headers=reader)) == ["db01", "db02", "web02"]


def test_one_host_with_current_drift(client, reader, fleet):
    host = client.get("/api/v1/hosts/web03", headers=reader).json()
    assert host["last_run_id"] == fleet["web03"].run_id
    assert [d["task"] for d in host["drift"]] == ["nginx config", "sysctl"]
    assert host["drift"][1]["kind"] == "recurring"
    assert client.get("/api/v1/hosts/nope", headers=reader).status_code == 404


def test_host_runs_newest_first_with_status_filter(client, reader, fleet):
    body = client.get("/api/v1/hosts/web02/runs", headers=reader).json()
    assert [r["run_id"] for r in body["items"]] == [fleet["web02"].run_id, fleet["web02-old"].run_id]
    assert "report" not in body["items"][0]
    in_sync = client.get("/api/v1/hosts/web02/runs?status=in_sync", headers=reader).json()
    assert [r["run_id"] for r in in_sync["items"]] == [fleet["web02-old"].run_id]
    assert client.get("/api/v1/hosts/nope/runs", headers=reader).status_code == 404


def test_one_run_whole(client, reader, fleet):
    run = client.get(f"/api/v1/runs/{fleet['web03'].run_id}", headers=reader).json()
    assert run["status"] == "drifted"
    diff = run["report"]["drift"][0]["diffs"][0]
    assert diff["path"] == "/etc/nginx/conf.d/site0.conf"
    assert "backend-new" in diff["after"]
    assert client.get("/api/v1/runs/nope", headers=reader).status_code == 404


def test_drift_by_task(client, reader, fleet):
    body = client.get("/api/v1/drift", headers=reader).json()
    by_task = {i["task"]: i for i in body["items"]}
    assert set(by_task) == {"nginx config", "sysctl"}  # db02's pg_hba was corrected: not current
    assert by_task["nginx config"]["hosts"] == 2
    assert by_task["nginx config"]["kinds"] == {"corrective": 2}
    assert by_task["sysctl"]["kinds"] == {"recurring": 1}
    assert body["items"][0]["task"] == "nginx config"  # most hosts first
    kinds = client.get("/api/v1/drift?kind=recurring", headers=reader).json()
    assert [i["task"] for i in kinds["items"]] == ["sysctl"]


def test_which_hosts_drift_on_a_task(client, reader, fleet):
    body = client.get("/api/v1/drift?group=host&task=nginx%20config", headers=reader).json()
    assert [(i["host"], i["status"]) for i in body["items"]] == [("web02", "drifted"), ("web03", "drifted")]
    assert body["total"] == 2


def test_commit_rollout(client, reader, fleet):
    body = client.get(f"/api/v1/commits/{COMMIT_B[:7]}", headers=reader).json()
    assert body["commit"]["sha"] == COMMIT_B
    assert body["commit"]["subject"] == "Tune nginx workers"
    assert body["summary"] == {"hosts_total": 5, "running": 3, "not_reached": 2, "ever_ran": 3,
                               "converged": 1, "drifted": 1, "paused": 0, "failed": 1}
    assert names_of(body["hosts"]) == ["db01", "web01", "web02"]
    behind = client.get(f"/api/v1/commits/{COMMIT_B}?hosts=not_reached", headers=reader).json()
    assert names_of(behind["hosts"]) == ["db02", "web03"]


def test_a_host_that_ran_a_commit_still_counts_after_prune_deletes_that_run(client, reader, fleet, engine):
    """`ever_ran` is every host that ever reported the commit (host_commits), not only those whose run of it
    is still stored: web02's run of COMMIT_A is a day old, and not its latest."""
    def ever_ran(commit):
        return client.get(f"/api/v1/commits/{commit}", headers=reader).json()["summary"]["ever_ran"]

    assert (ever_ran(COMMIT_A), ever_ran(COMMIT_B)) == (3, 3)  # A: web02 (the old run), web03, db02
    assert store.prune(engine, older_than=BASE_TIME) == 1
    assert (ever_ran(COMMIT_A), ever_ran(COMMIT_B)) == (3, 3)


def names_of(listing):
    return [i["host"] for i in listing["items"]]


def test_commit_rollout_errors(client, reader, fleet):
    assert client.get("/api/v1/commits/ffffffff", headers=reader).status_code == 404
    assert client.get("/api/v1/commits/ab", headers=reader).status_code == 400


def test_reading_needs_a_reader_token(client, fleet, token_for):
    assert client.get("/api/v1/hosts").status_code == 401
    ingest = {"Authorization": f"Bearer {token_for('web01')}"}
    assert client.get("/api/v1/hosts", headers=ingest).status_code == 403


def test_revoked_reader_token_is_401(client, engine, reader, fleet):
    tokens.revoke(engine, "alice", now=BASE_TIME)
    assert client.get("/api/v1/hosts", headers=reader).status_code == 401


@pytest.mark.parametrize("settings", [CollectorSettings(proxy=ProxyAuth("X-Remote-User"))])
def test_trusted_proxy_header_from_a_trusted_address(client, fleet):
    assert client.get("/api/v1/hosts", headers={"X-Remote-User": "alice"}).status_code == 200
    assert client.get("/api/v1/hosts", headers={"X-Remote-User": ""}).status_code == 401


@pytest.mark.parametrize("settings", [CollectorSettings(proxy=ProxyAuth("X-Remote-User", ("10.0.0.9",)))])
def test_trusted_proxy_header_is_ignored_from_other_addresses(client, fleet):
    assert client.get("/api/v1/hosts", headers={"X-Remote-User": "alice"}).status_code == 401


@pytest.mark.parametrize("settings", [CollectorSettings(proxy=ProxyAuth("X-Remote-User"))])
def test_trusted_proxy_header_never_allows_ingest(client):
    response = client.post("/api/v1/reports", content=b"{}", headers={"X-Remote-User": "web01"})
    assert response.status_code == 401


def test_healthz_is_public(client):
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok", "leader": None}


def test_metrics(client, reader, fleet, clock):
    clock.now = BASE_TIME + timedelta(hours=2)
    assert client.get("/metrics").status_code == 401
    text = client.get("/metrics", headers=reader).text
    assert 'gitops_hosts{status="drifted"} 2' in text
    assert "gitops_hosts_stale 5" in text
    assert 'gitops_drift_items{kind="corrective"} 2' in text  # db02 corrected its pg_hba
    assert 'gitops_reports_ingested_total{result="created"} 6' in text
    assert 'gitops_ingest_duration_seconds_count 6' in text
    client.post("/api/v1/reports", content=b"{}")
    text = client.get("/metrics", headers=reader).text
    assert 'gitops_reports_ingested_total{result="rejected_401"} 1' in text


@pytest.mark.parametrize("settings", [CollectorSettings(public_metrics=True)])
def test_public_metrics(client):
    assert client.get("/metrics").status_code == 200


def test_openapi_describes_every_route(client):
    from agent.collector.app import ROUTES

    document = client.get("/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert {r.path for r in ROUTES} == set(document["paths"])
    assert document["components"]["schemas"]["Report"]["properties"]["schema_version"] == {"const": 1}


def test_every_operation_with_a_path_parameter_documents_404(client):
    """A path parameter that is not what the route expects (a slash in it, say) matches no route: 404."""
    document = client.get("/api/v1/openapi.json").json()
    undocumented = [f"{method.upper()} {path}" for path, operations in document["paths"].items() if "{" in path
                    for method, operation in operations.items() if "404" not in operation["responses"]]
    assert undocumented == []
    response = client.request("PUT", "/api/v1/rollouts/x/runs/policy", content="x")
    assert response.status_code == 404
    # a `?` in it cuts the path short, onto another route's path: a POST or PUT may get 405
    reshaped = [f"{method.upper()} {path}" for path, operations in document["paths"].items() if "{" in path
                for method, operation in operations.items() if method != "get" and "405" not in operation["responses"]]
    assert reshaped == []
    assert client.request("PUT", "/api/v1/rollouts/web?x/policy&policy=" + "0" * 64, content="x").status_code == 405


def test_unknown_route_is_json_404(client):
    response = client.get("/api/v1/nothing")
    assert response.status_code == 404
    assert "error" in response.json()


def test_sorting_by_status_goes_by_severity_not_the_alphabet(client, reader, fleet, send):
    assert send(make_report("lb01", status=Status.PAUSED, finished_at=BASE_TIME)).status_code == 201
    assert send(make_report("app01", status=Status.ERROR, finished_at=BASE_TIME)).status_code == 201
    ordered = names(client.get("/api/v1/hosts?sort=status", headers=reader))
    assert ordered == ["db01", "app01", "web02", "web03", "lb01", "db02", "web01"]
    assert names(client.get("/api/v1/hosts?sort=status&order=desc", headers=reader))[0] == "web01"


def test_runs_across_the_fleet_newest_first(client, reader, fleet):
    body = client.get("/api/v1/runs?limit=2", headers=reader).json()
    assert [i["host"] for i in body["items"]] == ["db02", "db01"] and body["total"] == 6
    assert body["next_offset"] == 2 and "report" not in body["items"][0]
    failed = client.get("/api/v1/runs?status=failed,drifted", headers=reader).json()
    assert sorted(i["host"] for i in failed["items"]) == ["db01", "web02", "web03"]
    on_a = client.get(f"/api/v1/runs?commit={COMMIT_A[:6]}", headers=reader).json()
    assert sorted(i["host"] for i in on_a["items"]) == ["db02", "web02", "web03"]


def test_commits_newest_first_with_hosts_running_and_converged(client, reader, fleet, send, clock):
    clock.now = BASE_TIME + timedelta(hours=1)
    newest = "c0ffee" + "0" * 34
    assert send(make_report("web01", commit=newest, finished_at=clock.now)).status_code == 201
    body = client.get("/api/v1/commits", headers=reader).json()
    rows = [(i["sha"], i["running"], i["converged"], i["failed"], i["hosts_total"]) for i in body["items"]]
    # first seen by the collector: COMMIT_B (web01, minute 0), COMMIT_A (web03, minute 2), then newest
    assert rows == [(newest, 1, 1, 0, 5), (COMMIT_A, 2, 1, 0, 5), (COMMIT_B, 2, 0, 1, 5)]
    assert body["items"][0]["subject"] == "Tune nginx workers" and body["total"] == 3
    page = client.get("/api/v1/commits?limit=1&offset=2", headers=reader).json()
    assert [i["sha"] for i in page["items"]] == [COMMIT_B] and page["next_offset"] is None


def ui_names(response):
    """The hosts of the overview page's table, in order."""
    assert response.status_code == 200, response.text
    table = response.text.split('<table class="hosts">', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<a class="host" href="/hosts/([^"]+)">', table)


# One parser (agent.collector.params) behind both: the page / and /api/v1/hosts select the same hosts.
SAME_SELECTION = [
    ("", ["db01", "db02", "web01", "web02", "web03"]),
    ("stale=true", ["web01", "web03"]),
    ("stale=false", ["db01", "db02", "web02"]),
    ("stale=0", ["db01", "db02", "web02"]),
    ("stale=no", ["db01", "db02", "web02"]),
    ("stale=YES", ["web01", "web03"]),
    ("status=stale", ["web01", "web03"]),
    ("status=drifted&stale=false", ["web02"]),
    ("status=drifted,stale", ["web03"]),
    ("status=stale&stale=false", []),  # stale and not stale: nobody (an answer, not an error)
    ("status=failed,corrected", ["db01", "db02"]),
    ("role=backup", ["db02"]),
    (f"commit={COMMIT_A[:8]}&stale=false", ["db02"]),
    ("q=web0&order=desc", ["web03", "web02", "web01"]),
    ("sort=drift&order=desc&limit=2", ["web03", "web02"]),  # db02 corrected its drift: none current
    ("sort=last_seen&limit=2&offset=2", ["db01", "db02"]),  # +0 web01, +2 web03, +3 db01, +4 db02 web02
    ("seen=-1h&stale=", ["web01", "web03"]),  # last seen at +0 and +2 min; now is +62.5 min
    ("seen=1h&order=desc", ["web02", "db02", "db01"]),
    ("role=&q=&seen=&limit=", ["db01", "db02", "web01", "web02", "web03"]),
]


@pytest.mark.parametrize(("query", "expected"), SAME_SELECTION)
def test_the_ui_and_the_api_select_the_same_hosts(client, reader, fleet, clock, query, expected):
    # web01 and web03 are stale (see test_stale_hosts)
    clock.now = BASE_TIME + timedelta(seconds=1800 + 300 + 600 + 150)
    if "seen=" in query:
        clock.now = BASE_TIME + timedelta(minutes=62, seconds=30)
    assert names(client.get(f"/api/v1/hosts?{query}", headers=reader)) == expected
    assert ui_names(client.get(f"/?{query}", headers=reader)) == expected


SAME_REFUSAL = [
    ("/?stale=maybe", "/api/v1/hosts?stale=maybe"),
    ("/?status=bogus", "/api/v1/hosts?status=bogus"),
    ("/?sort=color", "/api/v1/hosts?sort=color"),
    ("/?order=up", "/api/v1/hosts?order=up"),
    ("/?seen=2y", "/api/v1/hosts?seen=2y"),
    ("/?limit=0", "/api/v1/hosts?limit=0"),
    ("/?offset=-1", "/api/v1/hosts?offset=-1"),
    ("/drift?kind=sideways", "/api/v1/drift?kind=sideways"),
    ("/drift?limit=1001", "/api/v1/drift?limit=1001"),
    (f"/commits/{COMMIT_B[:8]}?hosts=all", f"/api/v1/commits/{COMMIT_B[:8]}?hosts=all"),
    ("/webhooks?status=sent", "/api/v1/webhooks?status=sent"),
    ("/stale?limit=abc", "/api/v1/hosts?stale=true&limit=abc"),
]


@pytest.mark.parametrize(("page", "api"), SAME_REFUSAL)
def test_the_ui_and_the_api_refuse_the_same_values_with_the_same_message(client, reader, fleet, page, api):
    refused = client.get(api, headers=reader)
    assert refused.status_code == 400
    message = refused.json()["error"]
    named = api.rsplit("&", 1)[-1].split("?")[-1].split("=")[0]  # the last parameter is the bad one
    assert "\n" not in message and message.startswith(f"{named}: ")
    shown = client.get(page, headers=reader)
    assert shown.status_code == 400
    alert = re.search(r'<p class="error" role="alert">(.*?)</p>', shown.text)
    assert alert is not None and html.unescape(alert.group(1)) == message


def test_runs_take_run_statuses_only(client, reader, fleet):
    assert client.get("/api/v1/runs?status=stale", headers=reader).status_code == 400
    assert client.get("/api/v1/hosts/web02/runs?status=nope", headers=reader).status_code == 400
    runs = client.get("/api/v1/hosts/web02/runs?status=in_sync", headers=reader).json()
    assert [r["status"] for r in runs["items"]] == ["in_sync"]
