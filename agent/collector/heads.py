"""The commit beacon's collector side (docs/scale.md, "The commit beacon"): the heads of the watched Git
sources, learnt by asking Git itself, and served to agents so that a fleet asks Git once, not once per host.

- `HeadsSettings`: the watched sources (`serve --heads-source URL[#REF,...]`), how often the leader polls
  them (`--heads-poll`), the push-hook secret (`--hook-secret-file`).
- `ls_remote(url, refs)`: one `git ls-remote URL REF...` (all of a source's refs in one request), as
  `{full ref name: commit}`; `SourceUnreachable` with git's last line when it fails.
- `store_heads` / `read_heads`: the `source_heads` table (migration 0008), so every collector process serves
  the same heads and a restart forgets nothing.
- `pick(refs, ref)`: the commit an agent's `source.ref` names, by the agent's own rule (branch, else peeled
  tag, else tag, else the full ref name).
- Who polls: the collectors' leader (agent.collector.leader.Leader: an advisory lock on PostgreSQL, a
  flock on SQLite), the same one that runs the notifier and prune.
- `verify_hook(vendor, headers, body, secret)` and `hook_push(vendor, body)`: the push webhooks of GitHub
  (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`), Gitea/Forgejo (`X-Gitea-Signature` /
  `X-Forgejo-Signature: <hex HMAC-SHA256>`), GitLab (`X-Gitlab-Token: <the secret itself>`) and a generic
  form (`X-Signature-256: sha256=<hex>` over `{"url": ..., "ref": ..., "after": ...}`). Every comparison is
  constant-time. A verified hook is only a reason to ask Git now: the head served is always what
  `git ls-remote` answered, so even a leaked hook secret cannot make agents believe a commit that is not on
  the ref.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, select

from agent.collector import db
from agent.collector.errors import CollectorError, UnauthorizedError
from agent.collector.leader import Leader
from agent.collector.tables import source_heads
from agent.collector.tables import tokens as tokens_table
from agent.redact import redact_url

log = logging.getLogger(__name__)

VENDORS = ("github", "gitlab", "gitea", "generic")
LS_REMOTE_TIMEOUT_S = 60.0
CACHE_S = 1.0  # heads are read from the database at most this often per process
VALID_TOKENS = select(tokens_table.c.token_hash).where(
    tokens_table.c.revoked_at.is_(None), tokens_table.c.kind != "enrol")  # an enrolment secret only enrols
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_SCP = re.compile(r"^(?:[^@/]+@)?([^:/]+):(?!//)(.+)$")


class SourceUnreachable(CollectorError):
    status = 502


@dataclass(frozen=True)
class HeadSource:
    """A watched repository and the refs agents run (short names as in the agents' `source.ref`)."""

    url: str
    refs: tuple[str, ...] = ("main",)

    @property
    def key(self) -> str:
        return source_key(self.url)


@dataclass(frozen=True)
class HeadsSettings:
    sources: tuple[HeadSource, ...] = ()
    poll_s: float = 60.0
    hook_secret: bytes | None = None


def parse_source(text_: str) -> HeadSource:
    """`URL` or `URL#REF[,REF...]` (default ref: main); CollectorError naming what is wrong."""
    url, _, refs_text = text_.strip().partition("#")
    if not url:
        raise CollectorError(f"--heads-source {text_!r}: expected URL[#REF,...]")
    refs = tuple(r.strip() for r in refs_text.split(",")) if refs_text else ("main",)
    for ref in refs:
        if not ref or ref.startswith("-") or any(c in ref for c in " \t\n~^:?*[\\"):
            raise CollectorError(f"--heads-source {redact_url(url)}: {ref!r} is not a Git ref name")
    return HeadSource(url, refs)


def check_sources(sources: tuple[HeadSource, ...]) -> tuple[HeadSource, ...]:
    seen: set[str] = set()
    for s in sources:
        if s.key in seen:
            raise CollectorError(f"--heads-source {redact_url(s.url)}: the same repository is given twice")
        seen.add(s.key)
    return sources


def source_key(url: str) -> str:
    """The same repository under its https, ssh and scp-like URLs: `host/path` without `.git`, host in lower
    case, no user or port; a local path stays as it is (without a trailing `/` or `.git`)."""
    url = url.strip()
    if "://" in url:
        scheme, _, rest = url.partition("://")
        hostport, _, path = rest.partition("/")
        host = hostport.rpartition("@")[2].split(":")[0].lower() if scheme != "file" else ""
        key = f"{host}/{path}"
    elif (m := _SCP.match(url)) and not url.startswith("/"):
        key = f"{m.group(1).lower()}/{m.group(2)}"
    else:
        key = url
    key = key.rstrip("/")
    return key[:-4] if key.endswith(".git") else key


# -- asking Git ---------------------------------------------------------------------------------

def ls_remote(url: str, refs: tuple[str, ...], *, timeout_s: float = LS_REMOTE_TIMEOUT_S) -> dict[str, str]:
    """`git ls-remote URL REF...`: {full ref name: commit} of the refs whose tail matches one of `refs`."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}
    try:
        done = subprocess.run(["git", "ls-remote", "--", url, *refs], capture_output=True, text=True,
                              timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise SourceUnreachable(f"git ls-remote {redact_url(url)}: no answer in {timeout_s:g}s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise SourceUnreachable(f"git ls-remote {redact_url(url)}: {last}")
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if _SHA.match(sha.strip()) and name.strip():
            found[name.strip()] = sha.strip()
    return found


def pick(refs: Mapping[str, str], ref: str) -> str | None:
    """The commit `ref` resolves to among ls-remote's names (the agent's rule: branch, peeled tag, tag)."""
    for name in (f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", ref):
        if name in refs:
            return refs[name]
    return None


# -- the table ----------------------------------------------------------------------------------

def store_heads(engine: Engine, source: HeadSource, found: Mapping[str, str], *, now: datetime,
                via: str) -> int:
    """Replace the stored heads of `source` by `found`; returns how many heads changed."""
    with db.write(engine) as conn:
        old = {r.ref: r.commit for r in conn.execute(
            select(source_heads.c.ref, source_heads.c.commit).where(source_heads.c.source_key == source.key))}
        changed = 0
        gone = [name for name in old if name not in found]
        if gone:
            conn.execute(delete(source_heads).where(source_heads.c.source_key == source.key,
                                                    source_heads.c.ref.in_(gone)))
        for name, commit in found.items():
            if old.get(name) == commit:
                continue
            changed += 1
            if name in old:
                conn.execute(source_heads.update().where(
                    source_heads.c.source_key == source.key, source_heads.c.ref == name).values(
                    commit=commit, seen_at=now, via=via, source_url=redact_url(source.url)))
            else:
                conn.execute(source_heads.insert().values(source_key=source.key, ref=name, commit=commit,
                                                          seen_at=now, via=via,
                                                          source_url=redact_url(source.url)))
    return changed + len(gone)


Heads = dict[str, dict[str, tuple[str, datetime]]]  # source key -> full ref name -> (commit, seen_at)


def read_heads(engine: Engine) -> Heads:
    heads: Heads = {}
    with engine.connect() as conn:
        for r in conn.execute(select(source_heads)):
            heads.setdefault(r.source_key, {})[r.ref] = (r.commit, r.seen_at)
    return heads


# -- the per-process beacon ---------------------------------------------------------------------

@dataclass
class Beacon:
    """What one collector process keeps: the settings, a cached copy of the heads, the leader lock, and a
    one-second copy of the valid tokens' hashes for the heads endpoint (a beacon answer is only a hint, so
    a revoked token may read heads for at most a second more; ingest still checks every report's token)."""

    engine: Engine
    settings: HeadsSettings
    leader: Leader = field(init=False)
    _heads: Heads = field(default_factory=dict)
    _read_at: float = -1e9
    _tokens: frozenset[str] = frozenset()
    _tokens_at: float = -1e9
    git_requests: int = 0

    def __post_init__(self) -> None:
        self.leader = Leader(self.engine)

    def by_key(self) -> dict[str, HeadSource]:
        return {s.key: s for s in self.settings.sources}

    def cached_heads(self) -> Heads | None:
        """The heads copy while it is younger than CACHE_S, else None (then `heads()` in a thread)."""
        return self._heads if time.monotonic() - self._read_at < CACHE_S else None

    def heads(self) -> Heads:
        """The stored heads, read again from the database when the copy is older than CACHE_S."""
        cached = self.cached_heads()
        if cached is None:
            now = time.monotonic()
            self._heads, self._read_at = read_heads(self.engine), now
            return self._heads
        return cached

    def forget(self) -> None:
        self._read_at = -1e9

    def cached_tokens(self) -> frozenset[str] | None:
        """The hashes of every valid token while that copy is younger than CACHE_S, else None."""
        return self._tokens if time.monotonic() - self._tokens_at < CACHE_S else None

    def valid_tokens(self) -> frozenset[str]:
        """The hashes of every valid (unrevoked) token, read again when the copy is older than CACHE_S: one
        query a second for the whole fleet, where a lookup per poll would be one per request (agents poll
        once a minute, so a per-token cache would almost never hit)."""
        cached = self.cached_tokens()
        if cached is None:
            now = time.monotonic()
            with self.engine.connect() as conn:
                cached = frozenset(conn.execute(VALID_TOKENS).scalars())
            self._tokens, self._tokens_at = cached, now
        return cached

    def refresh(self, source: HeadSource, *, now: datetime, via: str) -> int:
        """Ask Git for `source`'s refs and store what it says; the number of heads that changed."""
        self.git_requests += 1
        found = ls_remote(source.url, source.refs)
        changed = store_heads(self.engine, source, found, now=now, via=via)
        if changed:
            self.forget()
            log.info("heads of %s changed (%d) via %s", redact_url(source.url), changed, via)
        return changed


# -- push webhooks ------------------------------------------------------------------------------

def _hex_hmac(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def sign(vendor: str, secret: bytes, body: bytes) -> dict[str, str]:
    """The header a vendor sends for `body` (tests, `bench/fleet_sim.py`, a generic sender)."""
    digest = _hex_hmac(secret, body)
    return {"github": {"X-Hub-Signature-256": f"sha256={digest}"},
            "gitea": {"X-Gitea-Signature": digest},
            "gitlab": {"X-Gitlab-Token": secret.decode()},
            "generic": {"X-Signature-256": f"sha256={digest}"}}[vendor]


def verify_hook(vendor: str, headers: Mapping[str, str], body: bytes, secret: bytes) -> None:
    """UnauthorizedError (401, one line) unless the request carries `vendor`'s valid signature."""
    digest = _hex_hmac(secret, body)
    if vendor in ("github", "generic"):
        name = "X-Hub-Signature-256" if vendor == "github" else "X-Signature-256"
        given, expected = headers.get(name.lower(), ""), f"sha256={digest}"
    elif vendor == "gitea":
        name = "X-Forgejo-Signature" if "x-forgejo-signature" in headers else "X-Gitea-Signature"
        given, expected = headers.get(name.lower(), ""), digest
    else:
        name, given, expected = "X-Gitlab-Token", headers.get("x-gitlab-token", ""), secret.decode()
    if not given:
        raise UnauthorizedError(f"{vendor} hook: no {name} header")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise UnauthorizedError(f"{vendor} hook: {name} does not match the hook secret")


@dataclass(frozen=True)
class Push:
    urls: tuple[str, ...]  # every URL the body names for the repository
    ref: str  # full ref name, e.g. refs/heads/main
    after: str


def _str(data: Any, *path: str) -> str | None:
    for step in path:
        if not isinstance(data, dict):
            return None
        data = data.get(step)
    return data if isinstance(data, str) else None


def hook_push(vendor: str, body: bytes) -> Push:
    """The repository URLs, ref and new commit of a push hook's body; BadHook (400) when it has none."""
    try:
        data = json.loads(body)
    except ValueError as e:
        raise BadHook(f"{vendor} hook: the body is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise BadHook(f"{vendor} hook: the body is not a JSON object")
    if vendor == "generic":
        paths: tuple[tuple[str, ...], ...] = (("url",),)
    elif vendor == "gitlab":
        paths = (("project", "git_http_url"), ("project", "git_ssh_url"), ("project", "web_url"),
                 ("repository", "git_http_url"), ("repository", "git_ssh_url"))
    else:  # github, gitea
        paths = (("repository", "clone_url"), ("repository", "ssh_url"), ("repository", "html_url"),
                 ("repository", "git_url"))
    urls = tuple(u for p in paths if (u := _str(data, *p)))
    ref, after = _str(data, "ref"), _str(data, "after")
    if not urls or not ref:
        raise BadHook(f"{vendor} hook: no repository URL or ref in the body (is it a push event?)")
    return Push(urls, ref, after or "")


class BadHook(CollectorError):
    status = 400


def matches(source: HeadSource, ref: str) -> bool:
    """Whether a push to full ref name `ref` can move one of `source`'s refs."""
    return any(ref in (f"refs/heads/{r}", f"refs/tags/{r}", r) for r in source.refs)
