"""Delivery of outbox reports to the collector: the one module on the agent side that speaks HTTP.

A report leaves the outbox only after a 2xx. What each answer of the collector does:

| answer                      | outcome    | the report                                                   |
| --------------------------- | ---------- | ------------------------------------------------------------ |
| 201 stored, other 2xx       | DELIVERED  | removed from the outbox                                      |
| 200 already stored          | DUPLICATE  | removed (this same report was stored before)                 |
| 408, 429, 5xx, network      | RETRY      | kept; retried with exponential backoff and full jitter       |
|                             |            | (Retry-After honoured), then at the next delivery            |
| 401, 404, 3xx               | STOP       | kept, and so is every later one: a token or collector.url    |
|                             |            | problem, not the report's; the delivery stops                |
| 409 run_id conflict         | REJECTED   | quarantined with the reason, logged as a conflict: the       |
|                             |            | collector holds another report under this run_id (this host  |
|                             |            | re-used one, or another host did); sending it again cannot   |
|                             |            | succeed, and dropping it would lose the run                  |
| any other 4xx (413, 422...) | REJECTED   | quarantined with the collector's reason                      |

Quarantined reports stay in `outbox/quarantine/` beside a `.reason` file (`gitops-agent outbox` lists
them) until someone requeues or removes them; they never block the reports behind them.

Usage (the CLI and daemon):
    with Sender.from_config(config.collector) as sender:
        result = sender.deliver_outbox(outbox)      # -> DeliveryResult
"""

from __future__ import annotations

import enum
import logging
import random
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from agent import __version__
from agent.config import CollectorConfig
from agent.errors import ConfigError
from agent.outbox import Outbox, OutboxEntry

log = logging.getLogger(__name__)

REPORTS_PATH = "/api/v1/reports"
HEALTH_PATH = "/healthz"
ROLLOUTS_PATH = "/api/v1/rollouts"
STOP_STATUSES = frozenset({401, 404})
RETRY_STATUSES = frozenset({408, 429})
CONFLICT = 409


class SendOutcome(enum.Enum):
    DELIVERED = "delivered"      # 2xx other than 200: stored now
    DUPLICATE = "duplicate"      # 200: the collector already had this run_id
    RETRY = "retry"              # try again later: 408, 429, 5xx, network
    REJECTED = "rejected"        # permanent for this report: quarantine it
    STOP = "stop"                # permanent for every report (token, URL): keep them, stop


@dataclass(frozen=True)
class SendResult:
    outcome: SendOutcome
    status_code: int | None
    reason: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery of the outbox did. `error` says why it stopped before the outbox was empty."""

    delivered: int = 0
    duplicates: int = 0
    quarantined: int = 0
    remaining: int = 0
    error: str | None = None
    lost: tuple[str, ...] = ()  # run ids of reports that were in no outbox and could not be sent either

    @property
    def ok(self) -> bool:
        return self.error is None and self.remaining == 0 and not self.lost


def classify_response(status_code: int) -> SendOutcome:
    """The outcome of one HTTP status from the ingest endpoint."""
    if status_code == 200:
        return SendOutcome.DUPLICATE
    if 200 <= status_code < 300:
        return SendOutcome.DELIVERED
    if status_code in RETRY_STATUSES or status_code >= 500:
        return SendOutcome.RETRY
    if status_code in STOP_STATUSES or 300 <= status_code < 400:
        return SendOutcome.STOP
    return SendOutcome.REJECTED


def backoff_delay_s(attempt: int, *, base_s: float, cap_s: float, rnd: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return rnd * min(cap_s, base_s * 2.0 ** max(attempt - 1, 0))


def read_token(path: Path) -> str:
    """The token in `path`; refused (like ssh does for keys) when group or others can access it."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):  # a directory's 0755 is no reason to advise chmod 600
            raise ConfigError(f"{path}: not a regular file (the collector token file)")
        if mode & 0o077:
            raise ConfigError(
                f"Permissions {stat.S_IMODE(mode):04o} for '{path}' are too open: a token file must not be "
                f"accessible by group or others (chmod 600 {path})")
        token = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the collector token ({e.strerror})") from e
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"{path}: the token file must hold one token on one line")
    return token


def tls_context(ca_file: Path | None, client_cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """The system's trust store, plus `ca_file` (a private CA) when given. Verification is always on.
    `client_cert` (certificate, key) is presented to a collector that asks for one."""
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"collector.ca_file {ca_file}: cannot load it as a CA bundle ({e})") from e
    if client_cert is not None:
        cert, key = client_cert
        try:
            context.load_cert_chain(certfile=str(cert), keyfile=str(key))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"collector.client_cert {cert} / client_key {key}: cannot load them "
                              f"({e})") from e
    return context


def http_reason(response: httpx.Response) -> str:
    """`HTTP <status>: <the body's "error", else its first 200 characters, else the reason phrase>`."""
    try:
        body = response.json()
        detail = body.get("error") if isinstance(body, dict) else None
    except ValueError:
        detail = None
    detail = detail or response.text[:200].strip() or response.reason_phrase
    return f"HTTP {response.status_code}: {detail}"


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    # ASCII digits only: "²".isdigit() is true and float("²") raises (a long number is inf: capped later).
    return float(value) if value.isascii() and value.isdigit() else None


class Sender:
    """Posts reports to one collector. Construct with `from_config`, or directly in tests (`transport`,
    `sleep` and `rnd` replace the network, the clock and the jitter)."""

    def __init__(self, url: str, token: str, *, ca_file: Path | None = None,
                 client_cert: tuple[Path, Path] | None = None, timeout_s: float = 15.0,
                 max_attempts: int = 4, backoff_base_s: float = 1.0, backoff_cap_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 rnd: Callable[[], float] = random.random) -> None:
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._sleep = sleep
        self._rnd = rnd
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                   "User-Agent": f"gitops-agent/{__version__}"}
        https = url.startswith("https:")
        # A TLS 1.3 server that wants a client certificate drops the connection after the handshake.
        self._cert_hint = https and client_cert is None
        verify: ssl.SSLContext | bool = tls_context(ca_file, client_cert) if https else True
        self._client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s,
                                    verify=verify, transport=transport, follow_redirects=False)

    @classmethod
    def from_config(cls, config: CollectorConfig, *, timeout_s: float = 15.0,
                    max_attempts: int = 4) -> Sender:
        """A sender for `collector.url` with the token from `collector.token_file` (checked)."""
        if not config.url:
            raise ConfigError("collector.url is not set: reports stay in the outbox")
        if config.token_file is None:
            raise ConfigError("collector.token_file is not set")
        client_cert = None
        if config.client_cert is not None and config.client_key is not None:
            client_cert = (config.client_cert, config.client_key)
        return cls(config.url, read_token(config.token_file), ca_file=config.ca_file, client_cert=client_cert,
                   timeout_s=timeout_s, max_attempts=max_attempts)

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def send(self, body: bytes) -> SendResult:
        """POST one report body once; never raises for HTTP or network trouble."""
        try:
            response = self._client.post(REPORTS_PATH, content=body)
        except httpx.HTTPError as e:
            hint = ""
            if self._cert_hint and isinstance(e, httpx.RemoteProtocolError):
                hint = (" (if the collector requires client certificates, set collector.client_cert and "
                        "collector.client_key)")
            return SendResult(SendOutcome.RETRY, None, f"{type(e).__name__}: {e}{hint}")
        outcome = classify_response(response.status_code)
        return SendResult(outcome, response.status_code, http_reason(response), _retry_after_s(response))

    def health(self) -> tuple[bool, str]:
        """Whether the collector answers GET /healthz with 200 (it and its database are up), and why not."""
        try:
            response = self._client.get(HEALTH_PATH)
        except httpx.HTTPError as e:
            return False, f"{type(e).__name__}: {e}"
        ok = response.status_code == 200
        return ok, "reachable" if ok else http_reason(response)

    def token_accepted(self) -> tuple[bool, str]:
        """Whether the collector accepts this token for reports, without storing anything: an empty
        body is posted; the token is checked before the body, so 401/403 mean the token is refused
        (unknown, revoked, a reader token) and a 400/422 about the body means it was accepted."""
        try:
            response = self._client.post(REPORTS_PATH, content=b"{}")
        except httpx.HTTPError as e:
            return False, f"{type(e).__name__}: {e}"
        if response.status_code in (400, 413, 422):
            return True, "accepted"
        return False, http_reason(response)

    def rollout(self, commit: str, policy_digest: str, policy_text: str) -> tuple[object | None, str]:
        """The collector's rollout answer for (commit, policy digest) as JSON data, sending the text of
        rollout.yml once when the collector does not know the policy (docs/rollout.md): one GET, and a
        PUT then one more GET when the policy is unknown. (None, why) when the collector cannot be
        reached or refuses: the gate then treats it as unreachable."""
        path = f"{ROLLOUTS_PATH}/{commit}"
        try:
            response = self._client.get(path, params={"policy": policy_digest})
            if response.status_code == 404 and "unknown policy" in response.text:
                put = self._client.put(f"{path}/policy", params={"policy": policy_digest},
                                       content=policy_text.encode(), headers={"Content-Type": "text/plain"})
                if put.status_code not in (200, 201):
                    return None, f"the collector refused the policy: {http_reason(put)}"
                response = self._client.get(path, params={"policy": policy_digest})
        except httpx.HTTPError as e:
            return None, f"{type(e).__name__}: {e}"
        if response.status_code != 200:
            return None, http_reason(response)
        try:
            return response.json(), "ok"
        except ValueError:
            return None, "the collector's rollout answer is not JSON"

    def _deliver(self, body: bytes, deadline: float | None) -> SendResult:
        attempt = 0
        while True:
            result = self.send(body)
            attempt += 1
            if result.outcome is not SendOutcome.RETRY or attempt >= self.max_attempts:
                return result
            delay = backoff_delay_s(attempt, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s,
                                    rnd=self._rnd())
            delay = min(max(delay, result.retry_after_s or 0.0), self.backoff_cap_s)
            if deadline is not None and time.monotonic() + delay > deadline:
                return result
            log.info("collector delivery will retry in %.1fs: %s", delay, result.reason)
            self._sleep(delay)

    def deliver_body(self, body: bytes, *, deadline_s: float | None = None) -> bool:
        """Send one report that is in no outbox (it could not be written); True once the collector has
        it (2xx). A refusal is logged: there is no outbox entry to quarantine."""
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        result = self._deliver(body, deadline)
        if result.outcome in (SendOutcome.DELIVERED, SendOutcome.DUPLICATE):
            return True
        log.error("a report that is in no outbox could not be delivered: %s", result.reason)
        return False

    def deliver_outbox(self, outbox: Outbox, *, deadline_s: float | None = None) -> DeliveryResult:
        """Deliver pending reports oldest first; stop at the first one that cannot be delivered now
        (so order is kept). `deadline_s` bounds the time spent, backoff included."""
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        counts = {o: 0 for o in SendOutcome}
        pending = outbox.pending()
        for index, entry in enumerate(pending):
            result = self._deliver_entry(outbox, entry, deadline)
            if result is None:
                continue
            counts[result.outcome] += 1
            if result.outcome in (SendOutcome.RETRY, SendOutcome.STOP):
                return DeliveryResult(counts[SendOutcome.DELIVERED], counts[SendOutcome.DUPLICATE],
                                      counts[SendOutcome.REJECTED], len(pending) - index, result.reason)
        return DeliveryResult(counts[SendOutcome.DELIVERED], counts[SendOutcome.DUPLICATE],
                              counts[SendOutcome.REJECTED])

    def _deliver_entry(self, outbox: Outbox, entry: OutboxEntry, deadline: float | None) -> SendResult | None:
        try:
            body = outbox.read(entry)
        except FileNotFoundError:
            return None  # delivered meanwhile by another delivery
        result = self._deliver(body, deadline)
        if result.outcome in (SendOutcome.DELIVERED, SendOutcome.DUPLICATE):
            outbox.remove(entry)
        elif result.status_code == CONFLICT:
            log.error("collector holds another report under run_id %s; this one is quarantined, not "
                      "retried: %s", entry.run_id, result.reason)
            outbox.quarantine(entry, result.reason)
        elif result.outcome is SendOutcome.REJECTED:
            log.warning("collector refused report %s for good, quarantined: %s", entry.run_id, result.reason)
            outbox.quarantine(entry, result.reason)
        return result
