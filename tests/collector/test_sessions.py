"""Web UI sign-in (issue 15): sessions kept in the database, ended by logout, expiry and token revocation
in every collector process sharing it; form posts only from the collector's own pages (Origin, else
Referer; the public URL of a proxy in front when configured). On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from agent.collector import db, tokens
from agent.collector.app import create_app
from agent.collector.context import Collector, CollectorSettings
from agent.collector.tables import sessions
from tests.collector.conftest import ASGIClient
from tests.factory import BASE_TIME, make_report
from tests.live_collector import CollectorProcess

HERE = "http://collector.test"  # the test client's base URL: the collector's own origin
URLENCODED = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def token(reader) -> str:
    return reader["Authorization"].split()[1]


@pytest.fixture
def seeded(send) -> None:
    assert send(make_report("web01")).status_code == 201


def login(client: ASGIClient, token: str, **headers: str):
    return client.post("/login", content=f"token={token}&next=/drift", headers={**URLENCODED, **headers})


def session_cookie(response) -> str:
    value = response.headers["set-cookie"].split(";", 1)[0]
    name, _, secret = value.partition("=")
    assert name == "gitops_session" and secret
    return secret


def test_form_posts_need_an_origin_or_referer_from_this_site(client, token, seeded):
    refused = [login(client, token),  # neither header (a login CSRF from a page that strips them)
               login(client, token, Origin="null"),  # sandboxed frames, file: pages
               login(client, token, Origin="https://evil.example"),
               login(client, token, Referer="https://evil.example/page"),
               login(client, token, Origin="https://evil.example", Referer=f"{HERE}/login"),  # Origin rules
               login(client, token, Origin="http://collector.test:8080"),  # same host, another port
               login(client, token, Origin="https://collector.test")]  # same host, another scheme
    for response in refused:
        assert response.status_code == 403 and "set-cookie" not in response.headers
        assert "sent from this site" in response.text
    assert login(client, token, Referer=f"{HERE}/login?next=/").status_code == 303  # no Origin: Referer
    assert login(client, token, Origin=HERE).status_code == 303
    assert login(client, token, Origin="http://COLLECTOR.test:80").status_code == 303  # same origin


def test_a_login_form_is_read_whole_or_refused_with_one_line(client, token, seeded):
    """A login body is read as every form is (ui_auth.read_form): not cut at 8 KiB nor its bad bytes
    replaced (both turned into a plain "not a valid token" before), and no session comes of it."""
    cases = [(b"token=" + token.encode() + b"&next=/drift&next=/", 422, "next: given more than once"),
             (b"token=" + token.encode() + b"&next=/caf\xe9", 422, "form: not UTF-8"),
             (b"token=" + token.encode() + b"&next=/" + b"a" * 9000, 413, "over the limit of 8192"),
             (b"token=" + token.encode() + b"&nxt=/drift", 422, "&#39;nxt&#39;: not a field of this form")]
    for body, status, message in cases:
        refused = client.post("/login", content=body, headers={**URLENCODED, "Origin": HERE})
        assert refused.status_code == status and message in refused.text, body[:60]
        assert "set-cookie" not in refused.headers
    for media_type in ("multipart/form-data; boundary=b0", "application/json", None):  # what no login form sends
        headers = {"Origin": HERE, **({"Content-Type": media_type} if media_type else {})}
        refused = client.post("/login", content=b"token=" + token.encode(), headers=headers)
        kind = media_type.split(";")[0] if media_type else "none"
        assert refused.status_code == 415, media_type
        assert f"form: Content-Type must be application/x-www-form-urlencoded, got &#39;{kind}&#39;" in refused.text
        assert "set-cookie" not in refused.headers


def test_logout_needs_this_site_too_and_ends_the_session(client, token, seeded):
    assert login(client, token, Origin=HERE).status_code == 303
    assert client.post("/logout").status_code == 403
    assert client.get("/drift").status_code == 200  # a cross-site logout did nothing
    assert client.post("/logout", headers={"Referer": f"{HERE}/drift"}).status_code == 303
    assert client.get("/drift").status_code == 303


def test_the_cookie_is_a_session_and_only_its_hash_is_stored(client, token, seeded, engine):
    secret = session_cookie(login(client, token, Origin=HERE))
    assert secret != token and token not in secret
    with engine.connect() as conn:
        stored = conn.execute(select(sessions.c.session_hash)).scalars().all()
    assert stored == [tokens.hash_token(secret)]


@pytest.fixture
def second_process(db_url, clock) -> Iterator[ASGIClient]:
    """Another collector process on the same database: its own engine and app, sharing nothing else."""
    engine = db.create(db_url)
    other = ASGIClient(create_app(Collector(engine, CollectorSettings(), now=clock)))
    yield other
    other.close()
    engine.dispose()


def test_logout_ends_a_copied_cookie_in_every_process(client, token, seeded, second_process):
    secret = session_cookie(login(client, token, Origin=HERE))
    copied = {"Cookie": f"gitops_session={secret}"}
    assert second_process.get("/drift", headers=copied).status_code == 200
    assert client.post("/logout", headers={"Origin": HERE}).status_code == 303
    stolen = second_process.get("/drift", headers=copied)
    assert stolen.status_code == 303 and stolen.headers["location"].startswith("/login")


def test_revoking_the_reader_token_ends_its_sessions_everywhere(client, token, seeded, second_process,
                                                               engine):
    secret = session_cookie(login(client, token, Origin=HERE))
    copied = {"Cookie": f"gitops_session={secret}"}
    assert second_process.get("/", headers=copied).status_code == 200
    tokens.revoke(engine, "alice", now=BASE_TIME)
    assert second_process.get("/", headers=copied).status_code == 303
    assert client.get("/").status_code == 303


def test_sessions_expire_after_12_hours_and_are_cleared(client, token, seeded, clock, engine):
    secret = session_cookie(login(client, token, Origin=HERE))
    clock.now = BASE_TIME + timedelta(hours=12) - timedelta(seconds=1)
    assert client.get("/drift").status_code == 200
    clock.now = BASE_TIME + timedelta(hours=12)
    assert client.get("/drift").status_code == 303
    assert login(client, token, Origin=HERE).status_code == 303  # a new sign-in clears expired rows
    with engine.connect() as conn:
        stored = conn.execute(select(sessions.c.session_hash)).scalars().all()
    assert tokens.hash_token(secret) not in stored and len(stored) == 1


def test_an_ingest_token_or_a_revoked_reader_token_makes_no_session(client, token, token_for, seeded, engine):
    assert login(client, token_for("web01"), Origin=HERE).status_code == 401
    tokens.revoke(engine, "alice", now=BASE_TIME)
    assert login(client, token, Origin=HERE).status_code == 401
    with engine.connect() as conn:
        assert conn.execute(select(sessions)).first() is None


@pytest.mark.parametrize("settings", [CollectorSettings(public_urls=("https://collector.example.com",))])
def test_the_public_url_of_a_proxy_is_accepted_and_makes_the_cookie_secure(client, token, seeded):
    response = login(client, token, Origin="https://collector.example.com")
    assert response.status_code == 303
    assert "secure" in response.headers["set-cookie"].lower()
    assert login(client, token, Referer="https://collector.example.com/login").status_code == 303
    assert login(client, token, Origin="https://collector.example.com:8443").status_code == 403
    assert login(client, token, Origin="http://collector.example.com").status_code == 403
    assert login(client, token, Origin=HERE).status_code == 303  # reached directly: still its own origin


def test_the_login_page_says_what_logout_does(client):
    html = client.get("/login").text
    assert "Logging out ends the session on the server" in html and "revoking the token" in html


def test_two_collector_processes_on_one_database_share_sessions(db_url, engine):
    """The multi-collector setup for real: two `serve` processes on one database, a browser signing in
    on one and (as a load balancer would send it) using the cookie on the other, then logging out."""
    reader_token = tokens.create(engine, tokens.TokenKind.READER, "bob", now=BASE_TIME)[1]
    first, second = CollectorProcess(db_url).start(), CollectorProcess(db_url).start()
    try:
        with httpx.Client(base_url=first.url, timeout=10) as one, httpx.Client(base_url=second.url,
                                                                                 timeout=10) as two:
            signed_in = one.post("/login", content=f"token={reader_token}&next=/",
                                 headers={**URLENCODED, "Origin": first.url})
            assert signed_in.status_code == 303
            cookie = {"Cookie": f"gitops_session={session_cookie(signed_in)}"}
            assert two.get("/", headers=cookie).status_code == 200
            assert one.post("/logout", headers={**cookie, "Origin": first.url}).status_code == 303
            assert two.get("/", headers=cookie).status_code == 303
    finally:
        first.stop()
        second.stop()
