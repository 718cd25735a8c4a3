"""The commit beacon's collector side: heads learnt from a real Git repository (ls-remote), by a poll or
by a verified push hook of each vendor, served with an ETag; the leader lock on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from agent.collector import tokens
from agent.collector.app import create_app
from agent.collector.cli import heads_of
from agent.collector.context import Collector, CollectorSettings
from agent.collector.errors import CollectorError, UnauthorizedError
from agent.collector.heads import (
    HeadSource,
    HeadsSettings,
    ls_remote,
    parse_source,
    sign,
    source_key,
    verify_hook,
)
from agent.collector.leader import Leader
from agent.collector.tokens import TokenKind
from tests.collector.conftest import ASGIClient, Clock
from tests.factory import BASE_TIME

SECRET = b"a-hook-secret-of-some-length"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def commit(repo: Path, message: str) -> str:
    (repo / "f.txt").write_text(message)
    _git(repo, "add", "f.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", message)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo.git"
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    commit(path, "one")
    return path


@pytest.fixture
def beacon_client(engine: Engine, repo: Path, clock: Clock) -> Iterator[tuple[ASGIClient, Collector]]:
    settings = CollectorSettings(heads=HeadsSettings((HeadSource(str(repo), ("main", "v1")),), 60.0, SECRET))
    collector = Collector(engine, settings, now=clock)
    client = ASGIClient(create_app(collector))
    yield client, collector
    client.close()


@pytest.fixture
def auth(engine: Engine) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.create(engine, TokenKind.INGEST, 'web1', now=BASE_TIME)[1]}"}


def test_source_key_is_the_same_for_every_url_of_a_repository() -> None:
    same = ["https://Git.Example.com/ops/site.git", "https://user:tok@git.example.com/ops/site",
            "ssh://git@git.example.com:2222/ops/site.git", "git@git.example.com:ops/site.git",
            "https://git.example.com/ops/site/"]
    assert {source_key(u) for u in same} == {"git.example.com/ops/site"}
    assert source_key("/srv/git/site.git") == "/srv/git/site"
    assert source_key("https://git.example.com/ops/other") != "git.example.com/ops/site"


def test_parse_source_and_its_one_line_errors() -> None:
    assert parse_source("https://h/r.git") == HeadSource("https://h/r.git", ("main",))
    assert parse_source("https://h/r.git#main,v1").refs == ("main", "v1")
    for bad in ("#main", "https://h/r#ma in", "https://h/r#-x", "https://h/r#a,,b"):
        with pytest.raises(CollectorError) as e:
            parse_source(bad)
        assert "\n" not in str(e.value)


def test_ls_remote_asks_real_git_and_names_the_failure(repo: Path, tmp_path: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    assert ls_remote(str(repo), ("main",)) == {"refs/heads/main": head}
    with pytest.raises(CollectorError, match=r"git ls-remote .*missing"):
        ls_remote(str(tmp_path / "missing"), ("main",))


@pytest.mark.parametrize("vendor", ["github", "gitlab", "gitea", "generic"])
def test_verify_hook_each_vendor(vendor: str) -> None:
    body = b'{"ref": "refs/heads/main"}'
    headers = {k.lower(): v for k, v in sign(vendor, SECRET, body).items()}
    verify_hook(vendor, headers, body, SECRET)
    with pytest.raises(UnauthorizedError, match="does not match"):
        verify_hook(vendor, headers, body, b"another-secret-of-some-length")
    if vendor != "gitlab":  # GitLab's token does not sign the body
        with pytest.raises(UnauthorizedError, match="does not match"):
            verify_hook(vendor, headers, body + b" ", SECRET)
    with pytest.raises(UnauthorizedError, match="no X-"):
        verify_hook(vendor, {}, body, SECRET)


def test_forgejo_header_is_accepted_for_gitea() -> None:
    body = b"{}"
    digest = sign("gitea", SECRET, body)["X-Gitea-Signature"]
    verify_hook("gitea", {"x-forgejo-signature": digest}, body, SECRET)


def _push(vendor: str, url: str, ref: str, after: str) -> bytes:
    if vendor == "gitlab":
        data: dict[str, object] = {"ref": ref, "after": after, "project": {"git_http_url": url}}
    elif vendor == "generic":
        data = {"url": url, "ref": ref, "after": after}
    else:
        data = {"ref": ref, "after": after, "repository": {"clone_url": url}}
    return json.dumps(data).encode()


def test_hooks_poll_and_etag(beacon_client: tuple[ASGIClient, Collector], repo: Path,
                             auth: dict[str, str]) -> None:
    client, collector = beacon_client
    query = {"source": str(repo), "ref": "main"}
    assert client.get("/api/v1/heads", params=query, headers=auth).status_code == 404  # Git not asked yet
    assert collector.beacon is not None
    collector.beacon.refresh(collector.beacon.settings.sources[0], now=BASE_TIME, via="poll")
    collector.beacon.forget()
    first = client.get("/api/v1/heads", params=query, headers=auth)
    assert first.status_code == 200, first.text
    assert first.json()["commit"] == _git(repo, "rev-parse", "HEAD")
    etag = first.headers["etag"]
    unchanged = client.get("/api/v1/heads", params=query, headers={**auth, "If-None-Match": etag})
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    for vendor in ("github", "gitlab", "gitea", "generic"):
        new = commit(repo, vendor)
        body = _push(vendor, f"{repo}/", "refs/heads/main", new)
        answer = client.post(f"/api/v1/hooks/{vendor}", content=body, headers=sign(vendor, SECRET, body))
        assert answer.status_code == 200, answer.text
        assert answer.json()["changed"] == 1
        moved = client.get("/api/v1/heads", params=query, headers={**auth, "If-None-Match": etag})
        assert moved.status_code == 200 and moved.json()["commit"] == new
        etag = moved.headers["etag"]
    assert collector.beacon.git_requests == 5  # one ls-remote per poll or push, none per agent poll


def test_a_lying_hook_cannot_set_a_head(beacon_client: tuple[ASGIClient, Collector], repo: Path,
                                        auth: dict[str, str]) -> None:
    client, _ = beacon_client
    body = _push("generic", str(repo), "refs/heads/main", "f" * 40)
    assert client.post("/api/v1/hooks/generic", content=body, headers=sign("generic", SECRET, body)
                       ).status_code == 200
    served = client.get("/api/v1/heads", params={"source": str(repo), "ref": "main"}, headers=auth)
    assert served.json()["commit"] == _git(repo, "rev-parse", "HEAD")  # what Git says, not the hook


def test_hook_refusals(beacon_client: tuple[ASGIClient, Collector], repo: Path) -> None:
    client, collector = beacon_client
    body = _push("github", str(repo), "refs/heads/main", "0" * 40)
    bad = client.post("/api/v1/hooks/github", content=body, headers=sign("github", b"x" * 20, body))
    assert bad.status_code == 401 and "does not match" in bad.json()["error"]
    other = _push("github", "https://elsewhere.example/r.git", "refs/heads/main", "0" * 40)
    assert client.post("/api/v1/hooks/github", content=other,
                       headers=sign("github", SECRET, other)).status_code == 202
    branch = _push("github", str(repo), "refs/heads/feature", "0" * 40)
    assert client.post("/api/v1/hooks/github", content=branch,
                       headers=sign("github", SECRET, branch)).status_code == 202
    garbage = b"not json"
    answer = client.post("/api/v1/hooks/gitea", content=garbage, headers=sign("gitea", SECRET, garbage))
    assert answer.status_code == 400 and "not JSON" in answer.json()["error"]
    assert client.post("/api/v1/hooks/bitbucket", content=body).status_code == 404
    assert collector.beacon is not None and collector.beacon.git_requests == 0


def test_heads_endpoint_refusals(beacon_client: tuple[ASGIClient, Collector], repo: Path, engine: Engine,
                                 auth: dict[str, str]) -> None:
    client, _ = beacon_client
    query = {"source": str(repo), "ref": "main"}
    assert client.get("/api/v1/heads", params=query).status_code == 401
    assert client.get("/api/v1/heads", params=query,
                      headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/v1/heads", params={"ref": "main"}, headers=auth).status_code == 400
    unwatched = client.get("/api/v1/heads", params={"source": "https://h/x", "ref": "main"}, headers=auth)
    assert unwatched.status_code == 404 and "not watched" in unwatched.json()["error"]


def test_no_beacon_configured(client: ASGIClient, auth: dict[str, str]) -> None:
    answer = client.get("/api/v1/heads", params={"source": "x", "ref": "main"}, headers=auth)
    assert answer.status_code == 404 and "--heads-source" in answer.json()["error"]


def test_one_leader_at_a_time(engine: Engine) -> None:
    first, second = Leader(engine), Leader(engine)
    assert first.try_lead() and first.try_lead()
    assert not second.try_lead()
    first.release()  # (it lets go: the lock is free when release() returns)
    assert second.try_lead()
    second.release()


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {"heads_source": [], "heads_poll": 60.0, "hook_secret_file": None}
    return argparse.Namespace(**{**base, **kw})


def test_serve_options_one_line_errors(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 20 + "\n")
    secret.chmod(0o640)
    settings = heads_of(_args(heads_source=["https://h/r.git#main"], hook_secret_file=secret))
    assert settings is not None and settings.hook_secret == b"s" * 20
    assert heads_of(_args()) is None
    cases: list[tuple[dict[str, object], str]] = [
        ({"hook_secret_file": secret}, "needs --heads-source"),
        ({"heads_source": ["https://h/r", "https://H/r.git"]}, "given twice"),
        ({"heads_source": ["https://h/r"], "heads_poll": 0.5}, "at least 1s"),
        ({"heads_source": ["https://h/r"], "hook_secret_file": tmp_path / "none"}, "cannot read"),
    ]
    short = tmp_path / "short"
    short.write_text("abc")
    short.chmod(0o600)
    cases.append(({"heads_source": ["https://h/r"], "hook_secret_file": short}, "at least 16"))
    open_ = tmp_path / "open"
    open_.write_text("s" * 20)
    open_.chmod(0o644)
    cases.append(({"heads_source": ["https://h/r"], "hook_secret_file": open_}, "chmod o-rwx"))
    for kw, message in cases:
        with pytest.raises(CollectorError, match=message) as e:
            heads_of(_args(**kw))
        assert "\n" not in str(e.value)



def test_the_poll_runs_in_one_process_only(engine: Engine, repo: Path, clock: Clock) -> None:
    """Two collector processes' poll loops on one database: only the leader asks Git, and it finds a new
    commit without any hook; when the leader stops, the other one takes over."""
    import asyncio

    import anyio

    from agent.collector.heads_views import poll_loop

    settings = CollectorSettings(heads=HeadsSettings((HeadSource(str(repo)),), 0.05, None))
    one, two = Collector(engine, settings, now=clock), Collector(engine, settings, now=clock)
    assert one.beacon is not None and two.beacon is not None

    async def run(collector: Collector, seconds: float) -> None:
        assert collector.beacon is not None
        with anyio.move_on_after(seconds):
            await poll_loop(collector, collector.beacon)

    async def both() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run, one, 0.5)
            await anyio.sleep(0.2)
            tasks.start_soon(run, two, 0.5)

    asyncio.run(both())
    assert one.beacon.git_requests >= 3 and two.beacon.git_requests == 0
    new = commit(repo, "two")
    one.beacon.leader.release()  # the leader goes away
    asyncio.run(run(two, 0.3))
    assert two.beacon.git_requests >= 1
    assert two.beacon.heads()[source_key(str(repo))]["refs/heads/main"][0] == new
    two.beacon.leader.release()


def test_a_revoked_token_reads_heads_for_at_most_a_second(beacon_client: tuple[ASGIClient, Collector],
                                                          repo: Path, engine: Engine,
                                                          auth: dict[str, str]) -> None:
    client, collector = beacon_client
    assert collector.beacon is not None
    collector.beacon.refresh(collector.beacon.settings.sources[0], now=BASE_TIME, via="poll")
    query = {"source": str(repo), "ref": "main"}
    assert client.get("/api/v1/heads", params=query, headers=auth).status_code == 200
    tokens.revoke(engine, "web1", now=BASE_TIME)
    collector.beacon._tokens_at -= 1.0  # a second later
    assert client.get("/api/v1/heads", params=query, headers=auth).status_code == 401
