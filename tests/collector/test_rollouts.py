"""The collector's rollouts (docs/rollout.md): the agents' endpoint, the policy upload, the automatic halt
and its alert, operators' halt/resume/skip and approvals (API and the commit page's form), on SQLite and
PostgreSQL through the real app."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from datetime import timedelta
from html import unescape
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import Engine, select

from agent.collector import rollout_store, tokens
from agent.collector.alerts import Webhook
from agent.collector.app import create_app
from agent.collector.context import Collector, CollectorSettings
from agent.collector.tables import rollout_actions, webhook_deliveries
from agent.collector.tokens import TokenKind
from agent.gate import HostView, decide_gate, plan_digest
from agent.report import GateState, RolloutInfo, Status, WaveSize
from agent.rollout import parse_policy
from agent.rollout_answer import facts_from_data
from tests.collector.conftest import ASGIClient
from tests.factory import BASE_TIME, COMMIT_A, drift_item, make_report

POLICY_TEXT = """\
version: 1
splay: 0s
waves:
  - name: canary
    groups: [canary]
  - name: early
    share: 50%
    soak: 10m
    criteria: {converged: 50%, max_failed: 0}
  - name: rest
    criteria: {converged: 100%, max_failed: 0}
approve:
  roles: [database]
windows:
  - name: nights
    roles: [database]
    days: [mon, tue, wed, thu, fri]
    start: "01:00"
    duration: 3h
    timezone: Europe/Berlin
freezes:
  - name: black-friday
    start: 2026-11-27T00:00:00+01:00
    end: 2026-11-30T23:59:00+01:00
"""
POLICY = parse_policy(POLICY_TEXT)
DIGEST = POLICY.digest()
SIZES = (WaveSize("canary", 2), WaveSize("early", 2), WaveSize("rest", 2))
HOOK = Webhook("http://127.0.0.1:9/hook")


@pytest.fixture
def settings() -> CollectorSettings:
    return CollectorSettings(operators=("alice",), webhooks=(HOOK,), rollout_cache_s=0)


def rollout_report(
    host: str,
    wave: str,
    *,
    status: Status = Status.IN_SYNC,
    gate: GateState = GateState.ALLOWED,
    minutes: int = 0,
    plan: str | None = None,
) -> Any:
    info = RolloutInfo(
        wave=wave,
        gate=gate,
        reason="wave open" if gate is GateState.ALLOWED else "waiting",
        policy_digest=DIGEST,
        wave_sizes=SIZES,
        plan_digest=plan,
    )
    return make_report(host, status=status, rollout=info, finished_at=BASE_TIME + timedelta(minutes=minutes))


def agent_headers(token_for: Callable[[str], str], host: str = "c1") -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(host)}"}


def ask(client: Any, token_for: Callable[[str], str], **headers: str) -> httpx.Response:
    return client.get(
        f"/api/v1/rollouts/{COMMIT_A}?policy={DIGEST}", headers={**agent_headers(token_for), **headers}
    )


def put_policy(
    client: Any, token_for: Callable[[str], str], text: str = POLICY_TEXT, digest: str = DIGEST
) -> httpx.Response:
    """Send the policy (the collector's clock: BASE_TIME, so the first wave opens then)."""
    return client.request(
        "PUT",
        f"/api/v1/rollouts/{COMMIT_A}/policy?policy={digest}",
        content=text.encode(),
        headers=agent_headers(token_for),
    )


def operator(engine: Engine, name: str = "alice") -> dict[str, str]:
    secret = tokens.create(engine, TokenKind.READER, name, now=BASE_TIME)[1]
    return {"Authorization": f"Bearer {secret}"}


def test_policy_is_learned_once_and_a_failing_canary_halts_with_an_alert(
    client, token_for, send, engine, clock
):
    first = ask(client, token_for)
    assert first.status_code == 404 and first.json() == {"error": "unknown policy"}
    assert put_policy(client, token_for).status_code == 201
    assert put_policy(client, token_for).status_code == 200  # known: nothing changes
    empty = ask(client, token_for).json()
    assert empty["halted"] is None and empty["approved_plans"] == []
    assert [(w["name"], w["size"], w["converged"]) for w in empty["waves"]] == [
        ("canary", 0, 0),
        ("early", 0, 0),
        ("rest", 0, 0),
    ]  # no host reported yet: sizes unknown
    assert [w["criteria_met_at"] for w in empty["waves"]] == [None, None, None]  # so nothing is met
    clock.now = BASE_TIME + timedelta(hours=1)  # later than the reports (later ones would be clamped)
    # c1 converges, c2 is still waiting: the canary wave is 1/2, early needs 50%: met at c1's report
    assert send(rollout_report("c1", "canary", minutes=1)).status_code == 201
    assert (
        send(rollout_report("e1", "early", gate=GateState.WAITING, status=Status.DRIFTED)).status_code == 201
    )
    answer = ask(client, token_for).json()
    canary = answer["waves"][0]
    assert (canary["size"], canary["converged"], canary["failed"]) == (2, 1, 0)
    assert canary["criteria_met_at"] == "2026-11-20T12:01:00.000Z"
    facts = facts_from_data(answer)  # the agent's decoder reads it, and the gate opens after the soak
    view = HostView("e1", "early")
    held = decide_gate(
        policy=POLICY,
        host=view,
        new_commit=True,
        facts=facts,
        commit_seen_at=BASE_TIME,
        plan=None,
        now=BASE_TIME + timedelta(minutes=5),
    )
    assert not held.allow and "soak and splay" in held.reason
    opened = decide_gate(
        policy=POLICY,
        host=view,
        new_commit=True,
        facts=facts,
        commit_seen_at=BASE_TIME,
        plan=None,
        now=BASE_TIME + timedelta(minutes=12),
    )
    assert opened.allow
    # the early wave: 0 failures allowed; e1 fails -> halt by the collector, alert queued, logged
    send(rollout_report("e1", "early", status=Status.FAILED, minutes=13))
    halted = ask(client, token_for).json()
    assert halted["halted"]["by"] == "collector" and halted["halted"]["wave"] == "early"
    assert halted["halted"]["reason"] == "wave early: 1 of 2 failed, at most 0 allowed"
    assert halted["waves"][0]["criteria_met_at"] == "2026-11-20T12:01:00.000Z"  # never moved back
    gate = decide_gate(
        policy=POLICY,
        host=HostView("r1", "rest"),
        new_commit=True,
        facts=facts_from_data(halted),
        commit_seen_at=BASE_TIME,
        plan=None,
        now=BASE_TIME + timedelta(hours=2),
    )
    assert (gate.allow, gate.state, gate.reason) == (
        False,
        GateState.HALTED,
        "halted: wave early: 1 of 2 failed, at most 0 allowed",
    )
    with engine.connect() as conn:
        alerts = conn.execute(select(webhook_deliveries.c.alert_kind, webhook_deliveries.c.summary)).all()
        actions = conn.execute(select(rollout_actions.c.action, rollout_actions.c.actor)).all()
    assert [(a.alert_kind, a.summary) for a in alerts] == [
        ("halted", f"e1 failed a rollout wave, which halted the rollout at commit {COMMIT_A[:10]}")
    ]
    ask(client, token_for)  # asking again records nothing more
    with engine.connect() as conn:
        assert conn.execute(select(rollout_actions.c.action)).all() == [("halt",)]
    assert [(a.action, a.actor) for a in actions] == [("halt", "collector")]


def test_an_older_report_does_not_replace_a_newer_outcome(client, token_for, send, clock):
    put_policy(client, token_for)
    clock.now = BASE_TIME + timedelta(hours=1)
    send(rollout_report("c1", "canary", minutes=10))
    send(rollout_report("c1", "canary", status=Status.FAILED, minutes=5))  # late delivery of an older run
    canary = ask(client, token_for).json()["waves"][0]
    assert (canary["converged"], canary["failed"]) == (1, 0)


def test_the_answer_is_cached_briefly_per_process(engine, token_for, send, clock):
    """With a cache time, an answer is served from memory until it passes (agents poll in thousands)."""
    cached = ASGIClient(create_app(Collector(engine, CollectorSettings(rollout_cache_s=3600), now=clock)))
    try:
        put_policy(cached, token_for)
        first = ask(cached, token_for).json()
        send(rollout_report("c1", "canary"))
        assert ask(cached, token_for).json() == first  # within the cache time: the same answer
    finally:
        cached.close()


def test_the_answer_has_an_etag(client, token_for, send):
    put_policy(client, token_for)
    first = ask(client, token_for)
    again = ask(client, token_for, **{"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    send(rollout_report("c1", "canary"))
    assert ask(client, token_for, **{"If-None-Match": first.headers["etag"]}).status_code == 200


@pytest.mark.parametrize(
    ("url", "method", "body", "status", "error"),
    [
        (f"/api/v1/rollouts/{COMMIT_A}", "GET", None, 400, "policy: give the policy digest"),
        (f"/api/v1/rollouts/{COMMIT_A}?policy=abc", "GET", None, 400, "policy: must be a sha256"),
        (f"/api/v1/rollouts/not-hex?policy={DIGEST}", "GET", None, 400, "commit: must be a Git object id"),
        (
            f"/api/v1/rollouts/{COMMIT_A}/policy?policy={'0' * 64}",
            "PUT",
            POLICY_TEXT,
            400,
            "policy: this rollout.yml has digest",
        ),
        (
            f"/api/v1/rollouts/{COMMIT_A}/policy?policy={DIGEST}",
            "PUT",
            "version: 2\nwaves: []\n",
            400,
            "rollout.yml: version: must be 1, got 2",
        ),
        (
            f"/api/v1/rollouts/{COMMIT_A}/policy?policy={DIGEST}",
            "PUT",
            "waves: [",
            400,
            "rollout.yml: not valid YAML",
        ),
        (
            f"/api/v1/rollouts/{COMMIT_A}/policy?policy={DIGEST}",
            "PUT",
            "\xff",
            400,
            "rollout.yml: must be a mapping",
        ),
    ],
)
def test_bad_agent_requests_get_one_line_naming_the_field(
    client, token_for, url, method, body, status, error
):
    response = client.request(
        method, url, content=None if body is None else body.encode(), headers=agent_headers(token_for)
    )
    assert response.status_code == status
    assert response.json()["error"].startswith(error)
    assert "\n" not in response.json()["error"]


def test_the_agents_endpoint_needs_an_ingest_token(client, engine):
    assert client.get(f"/api/v1/rollouts/{COMMIT_A}?policy={DIGEST}").status_code == 401
    reader = operator(engine, "bob")
    assert client.get(f"/api/v1/rollouts/{COMMIT_A}?policy={DIGEST}", headers=reader).status_code == 403


def test_a_revoked_ingest_token_is_refused_by_the_agents_endpoint_within_its_copys_age(
        client, engine, token_for, monkeypatch):
    """The agents' GET checks tokens against a copy of the valid ingest tokens read at most once per
    TOKENS_S (at 1,000 agents a lookup per ask was the bound): a revocation takes effect within that."""
    from agent.collector import rollout_api, tokens
    from tests.factory import BASE_TIME

    monkeypatch.setattr(rollout_api, "TOKENS_S", 0.3)
    url = f"/api/v1/rollouts/{COMMIT_A}?policy={DIGEST}"
    headers = {"Authorization": f"Bearer {token_for('web01.example.com')}"}
    answer = client.get(url, headers=headers)  # the token passes: no host sent this policy yet
    assert answer.status_code == 404 and "unknown policy" in answer.json()["error"]
    tokens.revoke(engine, "web01.example.com", now=BASE_TIME)
    time.sleep(0.35)
    assert client.get(url, headers=headers).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401


def act(client: Any, headers: dict[str, str], **body: Any) -> httpx.Response:
    return client.post(f"/api/v1/rollouts/{COMMIT_A}/actions", json=body, headers=headers)


def test_operators_halt_resume_and_skip_and_each_is_logged(client, token_for, send, engine, clock):
    put_policy(client, token_for)
    send(rollout_report("c1", "canary", status=Status.FAILED))
    alice = operator(engine)
    assert (
        act(client, operator(engine, "bob"), action="halt", reason="x").status_code == 403
    )  # not an operator
    assert (
        act(client, agent_headers(token_for), action="halt", reason="x").status_code == 403
    )  # a host's token
    assert act(client, alice, action="halt").json()["error"] == "reason: must be a string"
    assert act(client, alice, action="halt", reason="  ").json()["error"].startswith("reason: say why")
    assert (
        act(client, alice, action="explode", reason="x").json()["error"].startswith("action: must be one of")
    )
    not_json = client.post(
        f"/api/v1/rollouts/{COMMIT_A}/actions",
        content=b"action=halt&reason=x",
        headers={**alice, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert not_json.status_code == 400 and "application/json" in not_json.json()["error"]
    assert ask(client, token_for).json()["halted"]["by"] == "collector"  # canary: 1 of 2 failed
    clock.now = BASE_TIME + timedelta(minutes=1)
    assert (
        act(client, alice, action="halt", reason="x")
        .json()["error"]
        .startswith(f"commit {COMMIT_A[:12]} is already halted")
    )
    resumed = act(client, alice, action="resume", reason="c1 was a flaky disk")
    assert resumed.status_code == 201 and resumed.json()["actor"] == "alice"
    assert ask(client, token_for).json()["halted"] is None  # not halted again automatically for that wave
    skipped = act(client, alice, action="skip", wave="canary", reason="tested by hand")
    assert skipped.status_code == 201
    answer = ask(client, token_for).json()
    assert (
        answer["waves"][0]["skipped"] is True
        and answer["waves"][0]["criteria_met_at"] == "2026-11-20T12:01:00.000Z"
    )
    assert (
        act(client, alice, action="skip", wave="nope", reason="x")
        .json()["error"]
        .startswith("wave: 'nope' is not a wave")
    )
    clock.now = BASE_TIME + timedelta(minutes=2)
    act(client, alice, action="halt", reason="bad smell")
    assert ask(client, token_for).json()["halted"] == {
        "by": "alice",
        "at": "2026-11-20T12:02:00.000Z",
        "reason": "bad smell",
        "wave": None,
    }
    control = client.get(f"/api/v1/rollouts/{COMMIT_A}/control", headers=alice).json()
    assert [(e["action"], e["actor"], e["reason"]) for e in control["log"]] == [
        ("halt", "alice", "bad smell"),
        ("skip", "alice", "tested by hand"),
        ("resume", "alice", "c1 was a flaky disk"),
        ("halt", "collector", "wave canary: 1 of 2 failed, at most 0 allowed"),
    ]
    unknown = client.post(
        f"/api/v1/rollouts/{'d' * 40}/actions", json={"action": "halt", "reason": "x"}, headers=alice
    )
    assert unknown.status_code == 404


def test_a_nul_in_an_operators_text_is_refused_naming_the_field(client, token_for, send, engine):
    """A NUL in a reason was stored by SQLite and refused by PostgreSQL as "the database refused a value"
    (no field named); now refused on both, naming the field, and nothing is logged."""
    put_policy(client, token_for)
    send(rollout_report("c1", "canary", status=Status.DRIFTED))
    alice = operator(engine)
    for action, wave in (("halt", None), ("skip", "canary")):
        refused = act(client, alice, action=action, reason="bad\x00smell", **({"wave": wave} if wave else {}))
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "reason: must not contain a NUL character"
    approval = client.post(f"/api/v1/rollouts/{COMMIT_A}/approvals",
                           json={"plan_digests": ["f" * 64], "reason": "ok\x00"}, headers=alice)
    assert approval.json()["error"] == "reason: must not contain a NUL character"
    assert client.get(f"/api/v1/rollouts/{COMMIT_A}/control", headers=alice).json()["log"] == []


def test_a_field_an_operators_action_does_not_take_is_refused_naming_it(client, token_for, send, engine):
    """As the commit page's forms and the review API: a misspelt or foreign field in a JSON body is refused
    (it was ignored: `"waves": "canary"` on a skip named no wave, `"plan_digest"` beside the list was
    dropped without a word), and nothing is logged."""
    put_policy(client, token_for)
    send(rollout_report("c1", "canary", status=Status.DRIFTED))
    alice = operator(engine)
    refused = act(client, alice, action="halt", reason="x", waves="canary")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "'waves': not a field of this action (it takes action, reason, wave)"
    approval = client.post(f"/api/v1/rollouts/{COMMIT_A}/approvals",
                           json={"plan_digests": ["f" * 64], "plan_digest": "e" * 64, "reason": "ok"},
                           headers=alice)
    assert approval.status_code == 400, approval.text
    assert approval.json()["error"] == "'plan_digest': not a field of this action (it takes plan_digests, reason)"
    assert client.get(f"/api/v1/rollouts/{COMMIT_A}/control", headers=alice).json()["log"] == []
    assert act(client, alice, action="halt", reason="x").status_code == 201  # the control: the same, right


def test_one_approval_covers_every_host_with_that_plan(client, token_for, send, engine):
    put_policy(client, token_for)
    plan = plan_digest([("database", "pg config", "--- a\n+++ b\n")])
    other = plan_digest([("database", "pg config", "--- a\n+++ c\n")])
    for host in ("d1", "d2"):
        send(rollout_report(host, "rest", gate=GateState.WAITING, status=Status.DRIFTED, plan=plan))
    send(rollout_report("d3", "rest", gate=GateState.WAITING, status=Status.DRIFTED, plan=other))
    alice = operator(engine)
    control = client.get(f"/api/v1/rollouts/{COMMIT_A}/control", headers=alice).json()
    assert sorted((p["plan_digest"], tuple(p["hosts"])) for p in control["pending_plans"]) == sorted(
        [(plan, ("d1", "d2")), (other, ("d3",))]
    )
    url = f"/api/v1/rollouts/{COMMIT_A}/approvals"
    unknown = client.post(url, json={"plan_digests": ["f" * 64], "reason": "ok"}, headers=alice)
    assert unknown.status_code == 404  # well formed; no such plan (yet)
    assert unknown.json()["error"].startswith("plan ffffffffffff…: no host reported this plan")
    done = client.post(url, json={"plan_digests": [plan], "reason": "reviewed the pg diff"}, headers=alice)
    assert done.status_code == 201 and done.json() == {"approved": [plan]}
    assert ask(client, token_for).json()["approved_plans"] == [plan]
    facts = facts_from_data(ask(client, token_for).json())
    assert plan in facts.approved_plans and other not in facts.approved_plans  # d3's plan needs its own
    control = client.get(f"/api/v1/rollouts/{COMMIT_A}/control", headers=alice).json()
    assert [p["plan_digest"] for p in control["pending_plans"]] == [other]
    assert control["approved_plans"][0]["approved"]["actor"] == "alice"
    assert [f["name"] for f in control["freezes"]] == ["black-friday"]
    assert control["windows"][0]["name"] == "nights"


FORM = "application/x-www-form-urlencoded"


def page_csrf(client, headers) -> str:
    """The CSRF token the commit page's forms carry for this reader (none in a reader's page: "")."""
    found = re.search(r'name="csrf" value="([^"]*)"', client.get(f"/commits/{COMMIT_A}", headers=headers).text)
    return found.group(1) if found else ""


MULTIPART = "multipart/form-data; boundary=b0"
MULTIPART_HALT = (b'--b0\r\nContent-Disposition: form-data; name="op"\r\n\r\nhalt\r\n'
                  b'--b0\r\nContent-Disposition: form-data; name="reason"\r\n\r\nwhy\r\n--b0--\r\n')


def test_the_commit_page_form_acts_only_from_this_site_and_for_operators(client, token_for, send, engine):
    put_policy(client, token_for)
    send(rollout_report("c1", "canary"))
    alice, bob = operator(engine), operator(engine, "bob")
    form = {"op": "halt", "reason": "looks wrong", "csrf": page_csrf(client, alice)}
    url = f"/commits/{COMMIT_A}/rollout"
    assert client.post(url, data=form, headers=alice).status_code == 403  # no Origin, no Referer
    cross = client.post(url, data=form, headers={**alice, "Origin": "https://evil.example"})
    assert cross.status_code == 403
    same = {"Origin": "http://collector.test"}
    bob_csrf = hashlib.sha256(b"gitops-collector csrf\0" + bob["Authorization"][7:].encode()).hexdigest()
    assert page_csrf(client, bob) == ""  # a reader's page has no forms
    no_role = client.post(url, data={**form, "csrf": bob_csrf}, headers={**bob, **same})
    assert no_role.status_code == 403 and "CSRF" not in no_role.text  # a reader: no rollout.act
    for csrf in ("", "0" * 64, bob_csrf):  # missing, made up, another reader's
        refused = client.post(url, data={**form, "csrf": csrf}, headers={**alice, **same})
        assert refused.status_code == 403 and "CSRF token is missing or wrong" in refused.text
    refusals = [  # as the review forms: one line naming the field; nothing done
        ({**form, "reson": "typo"}, 422, "'reson': not a field of the halt form (it takes reason)"),
        # each op's form takes its own fields: a wave on a halt would be dropped, and a halt halts all
        ({**form, "wave": "canary"}, 422, "'wave': not a field of the halt form (it takes reason)"),
        ({**form, "op": "resume", "plan_digest": "ab"}, 422, "'plan_digest': not a field of the resume form"),
        ({k: v for k, v in form.items() if k != "op"}, 422, "op: must be one of approve, halt, resume, skip, got ''"),
        ({**form, "op": "stop"}, 422, "op: must be one of approve, halt, resume, skip, got 'stop'"),
        ({**form, "op": "skip"}, 422, "wave: required to skip"),
        ([*form.items(), ("reason", "again")], 422, "reason: given more than once"),
        ({**form, "reason": "x" * 9000}, 413, ""),
    ]
    for data, status, message in refusals:
        body = urlencode(list(data.items()) if isinstance(data, dict) else data)
        refused = client.post(url, content=body, headers={**alice, **same, "Content-Type": FORM})
        assert refused.status_code == status and message in unescape(refused.text), data
    latin1 = client.post(url, content="op=halt&reason=caf\xe9".encode("latin-1"),
                         headers={**alice, **same, "Content-Type": FORM})
    assert latin1.status_code == 422 and "form: not UTF-8" in latin1.text
    multipart = client.post(url, content=MULTIPART_HALT, headers={**alice, **same, "Content-Type": MULTIPART})
    assert multipart.status_code == 415 and ("form: Content-Type must be application/x-www-form-urlencoded, got "
                                             "'multipart/form-data'") in unescape(multipart.text)
    assert ask(client, token_for).json()["halted"] is None
    done = client.post(url, data=form, headers={**alice, **same})
    assert done.status_code == 303 and done.headers["location"] == f"/commits/{COMMIT_A}#rollout"
    assert ask(client, token_for).json()["halted"]["by"] == "alice"


def test_a_stored_policy_reads_back_with_the_same_digest(engine):
    assert rollout_store.store_policy(engine, COMMIT_A, DIGEST, POLICY_TEXT, now=BASE_TIME)
    with engine.connect() as conn:
        stored = rollout_store._policy(conn, COMMIT_A, DIGEST)
    assert stored is not None and stored[0] == POLICY and stored[0].digest() == DIGEST


def test_the_commit_page_is_the_rollout_control_shows_waves_halt_and_the_plan_and_approves_it(
    client, token_for, send, engine
):
    put_policy(client, token_for)
    plan = plan_digest([("database", "pg config", "diff")])
    pg = drift_item("pg config", role="database")
    for host in ("d1", "d2"):
        info = RolloutInfo(
            wave="rest",
            gate=GateState.WAITING,
            reason="waiting: approval",
            policy_digest=DIGEST,
            wave_sizes=SIZES,
            plan_digest=plan,
        )
        send(make_report(host, status=Status.DRIFTED, rollout=info, drift=(pg,), roles=("database",)))
    send(rollout_report("c1", "canary", status=Status.FAILED))
    alice, bob = operator(engine), operator(engine, "bob")
    page = client.get(f"/commits/{COMMIT_A}", headers=alice)
    assert page.status_code == 200
    html = page.text
    assert 'id="rollout"' in html and "Rollout control" in html and "Running it (" in html  # one page
    assert "Halted" in html and "wave canary: 1 of 2 failed, at most 0 allowed" in html
    assert "50% converged, at most 0 failed, then 600s soak before early" in html  # the canary's criteria
    assert f"Plan <code>{plan[:12]}</code> · 2 host(s)" in html and "/etc/nginx/conf.d/site0.conf" in html
    assert "black-friday" in html and "window <strong>nights</strong>" in html
    assert 'value="resume"' in html and f'value="{plan}"' in html  # an operator gets the forms
    read_only = client.get(f"/commits/{COMMIT_A}", headers=bob).text
    assert "Halted" in read_only and 'value="resume"' not in read_only  # a reader sees, cannot act
    form = {"op": "approve", "plan_digest": plan, "reason": "pg change reviewed", "csrf": page_csrf(client, alice)}
    done = client.post(
        f"/commits/{COMMIT_A}/rollout", data=form, headers={**alice, "Origin": "http://collector.test"}
    )
    assert done.status_code == 303
    assert ask(client, token_for).json()["approved_plans"] == [plan]
    after = client.get(f"/commits/{COMMIT_A}", headers=alice).text
    assert "No plan waits for approval" in after and "pg change reviewed" in after
    assert client.get(f"/commits/{'e' * 40}", headers=alice).status_code == 404
    assert client.get(f"/commits/{COMMIT_A}").status_code == 303  # to the login form
    # the control's former page is a redirect to the commit page's section
    moved = client.get(f"/commits/{COMMIT_A}/rollout", headers=alice, follow_redirects=False)
    assert (moved.status_code, moved.headers["location"]) == (301, f"/commits/{COMMIT_A}#rollout")


def test_a_commit_without_rollout_yml_has_no_rollout_control(client, send, engine):
    send(make_report("w1"))
    page = client.get(f"/commits/{COMMIT_A}", headers=operator(engine))
    assert page.status_code == 200
    assert "No rollout control: no host reported a rollout.yml" in page.text and 'id="rollout"' not in page.text
