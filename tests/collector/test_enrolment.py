"""Self-enrolment on the collector (agent.collector.enrolment, docs/collector.md "Enrolment"): a host asks
with the site enrolment secret, waits, an operator approves (by id, pattern or group) or denies, and the
host collects its own ingest token with its pickup secret; every refusal on the way, in-process against
the real app on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from agent.collector import tokens
from agent.collector.app import create_app
from agent.collector.auth import CLIENT_CERT_HOST
from agent.collector.context import Collector, CollectorSettings
from agent.collector.enrolment import EnrolPolicy
from agent.collector.tokens import TokenKind
from agent.report import to_json
from tests.collector.conftest import ASGIClient, Clock
from tests.factory import BASE_TIME, make_report

ENROL = "/api/v1/enrolments"


@pytest.fixture
def settings() -> CollectorSettings:
    return CollectorSettings(operators=("olga",),
                             enrol=EnrolPolicy(max_pending=8, max_pending_per_address=6, max_pending_per_host=2))


@pytest.fixture
def site_secret(engine: Engine) -> str:
    return tokens.create(engine, TokenKind.ENROL, "site-a", now=BASE_TIME)[1]


@pytest.fixture
def operator(engine: Engine) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.create(engine, TokenKind.READER, 'olga', now=BASE_TIME)[1]}"}


class Host:
    """One enrolling host: its pickup secret, and its request once made."""

    def __init__(self, client: ASGIClient, name: str, secret: str, groups: tuple[str, ...] = ()) -> None:
        self.client, self.name, self.secret, self.groups = client, name, secret, groups
        self.pickup_secret = secrets.token_urlsafe(32)
        self.id = ""

    def ask(self, **changes: Any) -> httpx.Response:
        body = {"host": self.name, "groups": list(self.groups),
                "pickup_sha256": hashlib.sha256(self.pickup_secret.encode()).hexdigest(), **changes}
        response = self.client.post(ENROL, json=body, headers={"Authorization": f"Bearer {self.secret}"})
        if response.status_code in (200, 201):
            self.id = response.json()["id"]
        return response

    def pickup(self, secret: str | None = None) -> httpx.Response:
        return self.client.post(f"{ENROL}/{self.id}/pickup",
                                headers={"Authorization": f"Bearer {secret or self.pickup_secret}"})


@pytest.fixture
def host(client: ASGIClient, site_secret: str) -> Callable[..., Host]:
    return lambda name, groups=(): Host(client, name, site_secret, groups)


def _decide(client: ASGIClient, who: dict[str, str], action: str, **body: Any) -> httpx.Response:
    return client.post(f"{ENROL}/{action}", json={"reason": "new rack 12", **body}, headers=who)


def _report(client: ASGIClient, host: str, token: str) -> httpx.Response:
    return client.post("/api/v1/reports", content=to_json(make_report(host)),
                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def test_a_host_asks_waits_is_approved_and_collects_its_own_token(client: ASGIClient, engine: Engine, host,
                                                                  operator) -> None:
    web = host("web07.example.com", ("web",))
    first = web.ask()
    assert first.status_code == 201 and first.json()["state"] == "pending"
    again = web.ask()  # the answer was lost: the same request, not a second one
    assert again.status_code == 200 and again.json()["id"] == web.id
    assert web.pickup().json() == {"id": web.id, "host": web.name, "state": "pending"}
    listed = client.get(ENROL, headers=operator).json()["enrolments"]
    assert [(e["id"], e["host"], e["groups"], e["auth"], e["auth_name"], e["existing"]) for e in listed] == [
        (web.id, web.name, ["web"], "secret", "site-a", False)]
    decided = _decide(client, operator, "approve", ids=[web.id])
    assert decided.status_code == 200
    (row,) = decided.json()["decided"]
    assert (row["state"], row["decided_by"], row["reason"]) == ("approved", "olga", "new rack 12")
    assert row["decided_at"] == "2026-01-15T12:00:00Z" or row["decided_at"].endswith("Z")
    answer = web.pickup()
    assert answer.headers["cache-control"] == "no-store"
    token = answer.json()["token"]
    assert answer.json()["state"] == "collected"
    assert _report(client, web.name, token).status_code == 201
    assert _report(client, "db01.example.com", token).status_code == 403  # bound to its own host
    # the answer was lost again: a new token, and the one before is revoked, so only one is ever valid
    second = web.pickup().json()["token"]
    assert second != token
    assert _report(client, web.name, token).status_code == 401
    assert client.get(f"{ENROL}?state=collected", headers=operator).json()["enrolments"][0]["existing"]
    # an operator revokes the host's token: a kept pickup secret cannot get another one
    tokens.revoke(engine, web.name, now=BASE_TIME)
    after = web.pickup()
    assert after.status_code == 403 and "was revoked" in after.json()["error"]
    assert _report(client, web.name, second).status_code == 401


@pytest.mark.parametrize(("auth", "status", "message"), [
    (None, 401, "missing site enrolment secret"),
    ("Bearer gco_nope", 401, "unknown or revoked enrolment secret"),
    ("ingest", 403, "a ingest token cannot enrol hosts"),
    ("reader", 403, "a reader token cannot enrol hosts"),
    ("revoked", 401, "unknown or revoked"),
])
def test_asking_needs_a_valid_site_enrolment_secret(client: ASGIClient, engine: Engine, auth: str | None,
                                                    status: int, message: str) -> None:
    headers = {}
    if auth in ("ingest", "reader", "revoked"):
        kind = {"ingest": TokenKind.INGEST, "reader": TokenKind.READER, "revoked": TokenKind.ENROL}[auth]
        secret = tokens.create(engine, kind, "web01" if auth == "ingest" else "x", now=BASE_TIME)[1]
        if auth == "revoked":
            tokens.revoke(engine, "x", now=BASE_TIME)
        headers["Authorization"] = f"Bearer {secret}"
    elif auth is not None:
        headers["Authorization"] = auth
    body = {"host": "web07", "pickup_sha256": "a" * 64}
    response = client.post(ENROL, json=body, headers=headers)
    assert response.status_code == status
    assert message in response.json()["error"]


@pytest.mark.parametrize(("body", "message"), [
    ({"host": "bad host", "pickup_sha256": "a" * 64}, "host: 'bad host' is not a host name"),
    ({"host": 7, "pickup_sha256": "a" * 64}, "host: must be a string"),
    ({"pickup_sha256": "a" * 64}, "host: must be a string"),
    ({"host": "web07"}, "pickup_sha256: expected the SHA-256"),
    ({"host": "web07", "pickup_sha256": "A" * 64}, "pickup_sha256"),
    ({"host": "web07", "pickup_sha256": "a" * 64, "groups": "web"}, "groups: expected a list"),
    ({"host": "web07", "pickup_sha256": "a" * 64, "groups": ["web", "a b"]}, "groups: 'a b' is not"),
    ({"host": "web07", "pickup_sha256": "a" * 64, "groups": ["g"] * 65}, "groups: expected a list"),
])
def test_a_bad_request_is_refused_with_the_field_named(client: ASGIClient, site_secret: str,
                                                       body: dict[str, Any], message: str) -> None:
    response = client.post(ENROL, json=body, headers={"Authorization": f"Bearer {site_secret}"})
    assert response.status_code == 400
    assert message in response.json()["error"]
    not_json = client.post(ENROL, content=b"[", headers={"Authorization": f"Bearer {site_secret}"})
    assert not_json.status_code == 400


def test_pending_requests_are_capped_per_host_per_address_and_in_total(engine: Engine, host) -> None:
    assert host("web01").ask().status_code == 201
    assert host("web01").ask().status_code == 201
    third = host("web01").ask()  # a leaked secret cannot pile up requests for one name
    assert third.status_code == 429 and "for host 'web01'" in third.json()["error"]
    for name in ("web02", "web03", "web04", "web05"):
        assert host(name).ask().status_code == 201
    seventh = host("web06").ask()  # 6 pending from 127.0.0.1
    assert seventh.status_code == 429 and "6 enrolment requests from 127.0.0.1" in seventh.json()["error"]


def test_the_total_cap_counts_every_address(engine: Engine, clock: Clock, site_secret: str) -> None:
    settings = CollectorSettings(enrol=EnrolPolicy(max_pending=2, max_pending_per_address=5))
    for n, expected in ((1, 201), (2, 201), (3, 429)):
        client = ASGIClient(create_app(Collector(engine, settings, now=clock)), (f"10.0.0.{n}", 4000))
        try:
            answer = Host(client, f"web{n}", site_secret).ask()
        finally:
            client.close()
        assert answer.status_code == expected
    assert "2 enrolment requests are pending already" in answer.json()["error"]


def test_pickup_needs_the_pickup_secret_of_that_request(client: ASGIClient, host, operator) -> None:
    web, other = host("web07"), host("web08")
    web.ask()
    other.ask()
    _decide(client, operator, "approve", ids=[web.id])
    assert web.pickup(secret=other.pickup_secret).status_code == 404  # another host's secret
    assert web.pickup(secret="guess").status_code == 404
    unknown = client.post(f"{ENROL}/0123456789abcdef/pickup", headers={"Authorization": "Bearer x"})
    assert unknown.status_code == 404
    assert client.post(f"{ENROL}/{web.id}/pickup").status_code == 401
    # the site secret is not enough to collect anything
    assert web.pickup(secret=web.secret).status_code == 404
    assert "token" in web.pickup().json()


def test_only_an_operator_decides_and_always_says_why(client: ASGIClient, engine: Engine, host,
                                                      operator, reader) -> None:
    web = host("web07")
    web.ask()
    assert client.post(f"{ENROL}/approve", json={"ids": [web.id], "reason": "x"}).status_code == 401
    refused = _decide(client, reader, "approve", ids=[web.id])  # alice reads, is no operator
    assert refused.status_code == 403 and "not an operator" in refused.json()["error"]
    ingest = {"Authorization": f"Bearer {tokens.create(engine, TokenKind.INGEST, 'web01', now=BASE_TIME)[1]}"}
    assert _decide(client, ingest, "approve", ids=[web.id]).status_code == 403
    site = {"Authorization": f"Bearer {web.secret}"}
    assert _decide(client, site, "approve", ids=[web.id]).status_code == 403  # the site secret cannot read
    assert client.get(ENROL, headers=site).status_code == 403
    for body, message in (({"ids": [web.id], "reason": " "}, "reason: say why"),
                          ({"ids": [web.id]}, "reason: must be a string"),
                          ({"reason": "x"}, "exactly one of"),
                          ({"ids": [web.id], "pattern": "web*", "reason": "x"}, "exactly one of"),
                          ({"pattern": "web*", "existing": True, "reason": "x"}, "existing: only with"),
                          ({"ids": "abc", "reason": "x"}, "ids: must be a list"),
                          # a field it does not take was ignored: a `dry_run` approved for real
                          ({"ids": [web.id], "reason": "x", "dry_run": True},
                           "'dry_run': not a field of this action (it takes existing, group, ids, pattern, "
                           "reason)"),
                          ({"patern": "web*", "ids": [web.id], "reason": "x"}, "'patern': not a field")):
        answer = client.post(f"{ENROL}/approve", json=body, headers=operator)
        assert answer.status_code == 400 and message in answer.json()["error"], body
    missing = _decide(client, operator, "approve", ids=["0123456789abcdef"])
    assert missing.status_code == 404 and "no pending enrolment request" in missing.json()["error"]
    assert client.get(f"{ENROL}?state=maybe", headers=operator).status_code == 400
    assert web.pickup().json()["state"] == "pending"  # none of that decided anything


def test_bulk_approval_by_pattern_or_group_never_takes_over_a_known_host(client: ASGIClient, host, operator,
                                                                          token_for, send) -> None:
    token_for("web01")  # web01 has a token already: a request for that name may be an impostor
    assert send(make_report("web02")).status_code == 201  # ... and web02 reports
    known = [host("web01", ("web",)), host("web02", ("web",))]
    twice = [host("web03", ("web",)), host("web03", ("web",))]  # two requests for one name
    fresh = [host("web04", ("web",)), host("web05", ("db",))]
    for h in known + twice + fresh:
        assert h.ask().status_code == 201
    by_pattern = _decide(client, operator, "approve", pattern="web*").json()
    assert [e["host"] for e in by_pattern["decided"]] == ["web04", "web05"]
    skipped = {e["host"]: e["why"] for e in by_pattern["skipped"]}
    assert "already has a token or reports" in skipped["web01"] and "web02" in skipped
    assert "2 requests for host 'web03' are pending" in skipped["web03"]
    # by id: one of the two web03 requests; the other is denied with it
    chosen = _decide(client, operator, "approve", ids=[twice[1].id]).json()
    assert [e["id"] for e in chosen["decided"]] == [twice[1].id]
    assert twice[0].pickup().json()["state"] == "denied"
    # a known host only by id, and only when the operator says it is that host
    assert _decide(client, operator, "approve", ids=[known[0].id]).json()["skipped"]
    taken = _decide(client, operator, "approve", ids=[known[0].id], existing=True).json()
    assert [e["host"] for e in taken["decided"]] == ["web01"]
    assert known[0].pickup().json()["token"]


def test_approval_by_group(client: ASGIClient, host, operator) -> None:
    web, db = host("web07", ("web", "eu")), host("db07", ("db",))
    web.ask()
    db.ask()
    decided = _decide(client, operator, "approve", group="web").json()["decided"]
    assert [e["host"] for e in decided] == ["web07"]
    assert db.pickup().json()["state"] == "pending"


def test_a_denied_host_learns_who_denied_it_and_why(client: ASGIClient, host, operator) -> None:
    web = host("web07")
    web.ask()
    _decide(client, operator, "approve", ids=[web.id])
    answer = _decide(client, operator, "deny", ids=[web.id], reason="not ours")  # before it collected
    assert answer.json()["decided"][0]["state"] == "denied"
    assert web.pickup().json() == {"id": web.id, "host": "web07", "state": "denied", "decided_by": "olga",
                                   "reason": "not ours"}
    assert _decide(client, operator, "approve", ids=[web.id]).status_code == 404  # no longer pending


@pytest.fixture
def cert_client(engine: Engine, clock: Clock) -> Iterator[Callable[[str | None], ASGIClient]]:
    """The app as `serve --tls-client-ca --enrol-autosign 'web*'` sees it: the TLS layer
    (agent.collector.tls, tested for real in test_enrol_live.py) leaves the certified name in the state."""
    made: list[ASGIClient] = []
    settings = CollectorSettings(client_cert_required=True, enrol=EnrolPolicy(autosign=("web*",)))

    def make(name: str | None) -> ASGIClient:
        app = create_app(Collector(engine, settings, now=clock))

        async def with_cert(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = {**scope.get("state", {}), CLIENT_CERT_HOST: name}
            await app(scope, receive, send)

        made.append(ASGIClient(with_cert))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_a_certificate_naming_the_host_is_autosigned_by_pattern(cert_client, token_for) -> None:
    web = Host(cert_client("web07"), "web07", "")
    assert web.ask().json()["state"] == "approved"
    assert web.pickup().json()["token"]
    db = Host(cert_client("db07"), "db07", "")
    assert db.ask().json()["state"] == "pending"  # not matched by the pattern
    token_for("web08")
    known = Host(cert_client("web08"), "web08", "")
    assert known.ask().json()["state"] == "pending"  # never autosigned: the name has a token
    other = Host(cert_client("web09"), "web01", "")
    refused = other.ask()
    assert refused.status_code == 403 and "is for host 'web09', not 'web01'" in refused.json()["error"]
    assert Host(cert_client(None), "web10", "").ask().status_code == 403


def test_the_web_ui_lists_pending_requests_for_readers(client: ASGIClient, host, reader, token_for) -> None:
    token_for("web01")
    web, known = host("web07", ("web", "eu")), host("web01")
    web.ask()
    known.ask()
    assert client.get("/enrolments").status_code in (302, 303, 307)  # to /login
    page = client.get("/enrolments", headers=reader)
    assert page.status_code == 200
    text = page.text
    assert web.id in text and "web07" in text and "web, eu" in text and "site-a" in text
    row = text[text.index(known.id):].split("</tr>")[0]
    assert "<strong>existing</strong>" in row
    assert "existing</strong>" not in text[text.index(web.id):].split("</tr>")[0]


def test_concurrent_pickups_leave_exactly_one_valid_token(engine: Engine, host, client: ASGIClient,
                                                         operator) -> None:
    """Pickups racing in threads (as two collector processes would): each revokes the one before it, so
    one token is valid at the end (PostgreSQL: a transaction lock serializes them)."""
    from concurrent.futures import ThreadPoolExecutor

    from agent.collector import enrolment

    web = host("web07")
    web.ask()
    _decide(client, operator, "approve", ids=[web.id])
    with ThreadPoolExecutor(6) as pool:
        made = list(pool.map(lambda _: enrolment.pickup(engine, web.id, web.pickup_secret, now=BASE_TIME)[1],
                             range(6)))
    valid = [t for t in made if t is not None and tokens.authenticate(engine, t) is not None]
    assert len(set(made)) == 6 and len(valid) == 1
