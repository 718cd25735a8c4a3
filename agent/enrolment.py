"""Self-enrolment, the agent's side (docs/collector.md "Enrolment"; the collector's side is
agent.collector.enrolment): while `collector.token_file` does not exist and `collector.enrol` is on, the
agent asks the collector for its own ingest token and collects it once an operator approves.

1. A random pickup secret is made and kept in `state_dir/enrolment.json` (0600) with the request id, the
   host and the collector URL, before anything is sent.
2. `POST /api/v1/enrolments {host, pickup_sha256, groups}`, with the site enrolment secret
   (`collector.enrol_secret_file`) or the client certificate. Asking again with the same pickup secret is
   the same request, so a lost answer costs nothing.
3. `POST /api/v1/enrolments/{id}/pickup` with the pickup secret: pending (reports stay in the outbox),
   denied (nothing more is asked until the state file is removed), or the token, which is written to
   `collector.token_file` (temp file, fsync, rename, mode 0600) before the state file goes.

`ensure_token(config, groups=...)` does one round of this; delivery calls it before each delivery while
there is no token file, the daemon at its poll pace, `gitops-agent enrol` on demand.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from agent import __version__
from agent.config import AgentConfig
from agent.errors import AgentError
from agent.fsutil import atomic_write
from agent.paths import StatePaths
from agent.sender import http_reason, read_token, tls_context

log = logging.getLogger(__name__)

ENROL_PATH = "/api/v1/enrolments"


@dataclass(frozen=True)
class EnrolStatus:
    """Where enrolment stands: `token_ready` once collector.token_file exists; `message` says why not."""

    token_ready: bool
    message: str
    request_id: str | None = None
    state: str | None = None  # pending | denied | collected | None (not asked yet, or failed)


def _load(config: AgentConfig) -> dict[str, Any] | None:
    path = StatePaths(config.state_dir).enrolment
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    wanted = {"url": config.collector.url, "host": config.host}
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in wanted.items()):
        return None  # another collector or host name: a new request
    return data if isinstance(data.get("pickup_secret"), str) else None


def _save(config: AgentConfig, data: dict[str, Any]) -> None:
    atomic_write(StatePaths(config.state_dir).enrolment, json.dumps(data).encode(), mode=0o600)


def _client(config: AgentConfig, transport: httpx.BaseTransport | None) -> httpx.Client:
    c = config.collector
    assert c.url is not None
    verify: ssl.SSLContext | bool = True
    if c.url.startswith("https:"):
        cert = (c.client_cert, c.client_key) if c.client_cert and c.client_key else None
        verify = tls_context(c.ca_file, cert)
    return httpx.Client(base_url=c.url.rstrip("/"), timeout=15.0, verify=verify, transport=transport,
                        follow_redirects=False, headers={"User-Agent": f"gitops-agent/{__version__}"})


def _ask(config: AgentConfig, client: httpx.Client, data: dict[str, Any],
         groups: tuple[str, ...]) -> str | None:
    """Send the request; None once it has an id (saved), else why not."""
    headers = {}
    if config.collector.enrol_secret_file is not None:
        headers["Authorization"] = f"Bearer {read_token(config.collector.enrol_secret_file)}"
    body = {"host": config.host, "groups": list(groups),
            "pickup_sha256": hashlib.sha256(data["pickup_secret"].encode()).hexdigest()}
    response = client.post(ENROL_PATH, json=body, headers=headers)
    if response.status_code not in (200, 201):
        return f"the collector refused the enrolment request: {http_reason(response)}"
    data["id"] = str(response.json()["id"])
    _save(config, data)
    log.info("enrolment requested: host=%s id=%s", config.host, data["id"])
    return None


def _pickup(config: AgentConfig, client: httpx.Client, data: dict[str, Any]) -> EnrolStatus:
    request_id = data["id"]
    response = client.post(f"{ENROL_PATH}/{request_id}/pickup",
                           headers={"Authorization": f"Bearer {data['pickup_secret']}"})
    state_file = StatePaths(config.state_dir).enrolment
    if response.status_code in (403, 404):  # forgotten (a new database), or its token revoked
        state_file.unlink(missing_ok=True)
        return EnrolStatus(False, f"enrolment request {request_id} is over ({http_reason(response)}); a new "
                                  "one is sent next time")
    if response.status_code != 200:
        return EnrolStatus(False, f"enrolment request {request_id}: {http_reason(response)}", request_id)
    answer = response.json()
    state, token = answer.get("state"), answer.get("token")
    if state == "denied":
        why = f"{answer.get('decided_by')}: {answer.get('reason')}"
        return EnrolStatus(False, f"enrolment request {request_id} was denied by {why} (remove {state_file} "
                                  "to ask again)", request_id, state)
    if not isinstance(token, str) or not token:
        return EnrolStatus(False, f"waiting for an operator to approve enrolment request {request_id} for "
                                  f"{config.host} (gitops-collector enrol approve {request_id})", request_id,
                           str(state))
    token_file = config.collector.token_file
    assert token_file is not None
    atomic_write(token_file, (token + "\n").encode(), mode=0o600)
    state_file.unlink(missing_ok=True)
    log.info("enrolment approved: host=%s id=%s token written to %s", config.host, request_id, token_file)
    return EnrolStatus(True, f"enrolled: token written to {token_file}", request_id, "collected")


def ensure_token(config: AgentConfig, *, groups: tuple[str, ...] = (),
                 transport: httpx.BaseTransport | None = None) -> EnrolStatus:
    """One round of enrolment, when it is on and there is no token file yet. Never raises for network
    or collector trouble (the status says it); AgentError for a missing or unsafe enrolment secret."""
    c = config.collector
    if c.token_file is None or c.token_file.exists():
        return EnrolStatus(True, "the token file exists")
    if not c.enrol or not c.url:
        return EnrolStatus(False, f"{c.token_file} does not exist (collector.enrol is off)")
    data = _load(config)
    if data is None:
        data = {"url": c.url, "host": config.host, "pickup_secret": secrets.token_urlsafe(32), "id": None}
        _save(config, data)
    try:
        with _client(config, transport) as client:
            if data.get("id") is None:
                why = _ask(config, client, data, groups)
                if why is not None:
                    return EnrolStatus(False, why)
            return _pickup(config, client, data)
    except httpx.HTTPError as e:
        why = f"enrolment: collector unreachable ({type(e).__name__}: {e})"
        return EnrolStatus(False, why, data.get("id"))
    except (ValueError, KeyError, TypeError) as e:
        return EnrolStatus(False, f"enrolment: the collector's answer is not what was expected ({e})")
    except OSError as e:
        raise AgentError(f"enrolment: cannot write {c.token_file} ({e.strerror or e})") from e
