"""The commit beacon's agent side (docs/scale.md, "The commit beacon"; `collector.beacon: true`): the
daemon's probe for new commits asks the collector which commit `source.ref` points at, instead of asking
Git, so a fleet's Git load does not grow with its size.

`BeaconProbe()` has the daemon's Probe shape (`() -> commit | None`):

- every call (every `schedule.poll`) is one `GET /api/v1/heads?source=URL&ref=REF` with `If-None-Match`: a
  304 costs the collector about what a static file costs;
- a head other than the one last seen is held back for this host's **commit splay** (a fixed offset in
  `[0, schedule.commit_splay)` from the host name, like the splay), so a fleet's fetches after a push are
  spread over that window; then it is returned and the daemon runs a cycle, whose fetch asks Git;
- **only a hint**: the cycle fetches the ref from Git and checks out what Git has, verifies its signature
  and refuses rewinds as always. A lying or stale beacon can delay a fetch (at most until the next full
  check, which fetches anyway) or cause one extra fetch; it never decides what is applied;
- when the collector cannot answer (connection error, timeout, 5xx, 429), or refuses (401, 403, 404: a
  configuration error, logged at most once an hour), the probe falls back to `git ls-remote` (the given
  `fallback`) at most every `schedule.fallback_poll`, and goes back to the beacon at its first good answer.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from agent import __version__
from agent.config import AgentConfig
from agent.errors import AgentError
from agent.sender import read_token, tls_context

log = logging.getLogger(__name__)
CONFIG_ERROR_LOG_S = 3600.0
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")

Probe = Callable[[], "str | None"]
Ask = Callable[[str | None], tuple[int, str | None, str | None]]  # (etag) -> (status, etag, commit)


def commit_splay_offset(host: str, commit_splay_s: float) -> float:
    """A fixed offset in [0, commit_splay_s) from the host name (another digest than the splay's, so a
    host early in one window is not early in both)."""
    if commit_splay_s < 1:
        return 0.0
    digest = int(hashlib.sha256(f"commit-splay:{host}".encode()).hexdigest()[:12], 16)
    return float(digest % int(commit_splay_s))


def http_ask(config: AgentConfig, *, timeout_s: float = 10.0) -> Ask:
    """One heads request to `collector.url` with this host's token (read again each time, so a new token
    file is used at once). Raises httpx.HTTPError when the collector cannot be reached."""
    collector = config.collector
    assert collector.url is not None and collector.token_file is not None
    url = collector.url.rstrip("/") + "/api/v1/heads"
    params = {"source": config.source.url, "ref": config.source.ref}
    client_cert = None
    if collector.client_cert is not None and collector.client_key is not None:
        client_cert = (collector.client_cert, collector.client_key)
    token_file: Path = collector.token_file

    def ask(etag: str | None) -> tuple[int, str | None, str | None]:
        headers = {"Authorization": f"Bearer {read_token(token_file)}",
                   "User-Agent": f"gitops-agent/{__version__}"}
        if etag:
            headers["If-None-Match"] = etag
        verify = tls_context(collector.ca_file, client_cert) if url.startswith("https:") else True
        with httpx.Client(timeout=timeout_s, verify=verify, follow_redirects=False) as client:
            response = client.get(url, params=params, headers=headers)
        commit = None
        if response.status_code == 200:
            try:
                value = response.json().get("commit")
            except (ValueError, AttributeError):
                value = None
            commit = value if isinstance(value, str) and _SHA.match(value) else None
            if commit is None:
                return 502, None, None  # not a heads answer: treated like an unreachable collector
        return response.status_code, response.headers.get("etag"), commit

    return ask


@dataclass
class BeaconProbe:
    """The daemon's probe over the beacon, with `fallback` (the Git source's own probe) when the collector
    is away. `clock` is monotonic seconds (tests give their own)."""

    ask: Ask
    fallback: Probe
    fallback_poll_s: float
    splay_offset_s: float = 0.0
    clock: Callable[[], float] = time.monotonic
    etag: str | None = None
    head: str | None = None  # what the beacon said last
    head_seen_at: float = 0.0  # when this probe first saw it
    next_fallback_at: float = 0.0
    config_error_logged_at: float | None = None
    away: bool = False  # the collector did not answer last time

    def __call__(self) -> str | None:
        now = self.clock()
        try:
            status, etag, commit = self.ask(self.etag)
        except (httpx.HTTPError, OSError, AgentError) as e:
            return self._fall_back(now, f"{type(e).__name__}: {e}", config_error=isinstance(e, AgentError))
        if status == 304 and self.head is not None:
            commit = self.head
        elif status == 200 and commit is not None:
            self.etag = etag
        elif status in (401, 403, 404):
            return self._fall_back(now, f"HTTP {status}", config_error=True)
        else:
            return self._fall_back(now, f"HTTP {status}", config_error=False)
        if self.away:
            log.info("beacon: the collector answers again; Git is asked only when the head moves")
            self.away = False
        self.next_fallback_at = 0.0
        if commit != self.head:
            self.head, self.head_seen_at = commit, now
        if now < self.head_seen_at + self.splay_offset_s:
            return None  # this host's commit splay has not passed yet
        return commit

    def _fall_back(self, now: float, why: str, *, config_error: bool) -> str | None:
        if config_error:
            if self.config_error_logged_at is None or now - self.config_error_logged_at >= CONFIG_ERROR_LOG_S:
                log.warning("beacon: the collector refuses the heads request (%s); asking Git every "
                            "%.0fs instead (check collector.url, the token, serve --heads-source)", why,
                            self.fallback_poll_s)
                self.config_error_logged_at = now
        elif not self.away:
            log.warning("beacon: the collector does not answer (%s); asking Git every %.0fs until it does",
                        why, self.fallback_poll_s)
        self.away = True
        if now < self.next_fallback_at:
            return None
        self.next_fallback_at = now + self.fallback_poll_s
        return self.fallback()


def probe_for(config: AgentConfig, fallback: Probe) -> Probe:
    """The daemon's probe for `config`: the beacon when `collector.beacon` is on, else `fallback`."""
    if not config.collector.beacon or _SHA.match(config.source.ref):
        return fallback  # a full commit id never moves: the source's probe answers without the network
    return BeaconProbe(http_ask(config), fallback, config.schedule.fallback_poll_s,
                       commit_splay_offset(config.host, config.schedule.commit_splay_s))
