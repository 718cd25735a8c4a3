"""Alerts from host state changes: pure functions, no clock, no I/O.

A host's alert state is one of ok, drifting, failing, stale. Only a change of state makes an event
(a host starts drifting, fails, goes stale, or recovers); events of one scan that share kind, task and
commit are grouped into one alert, whose fingerprint is stable (the same changes give the same
fingerprint, so a re-scan after a crash never sends an alert twice).

Across scans, alerts of one group (kind, task, commit: for failures, one commit's rollout) are held
and merged the way Prometheus Alertmanager groups notifications: a new group waits `group_wait` for
more of its hosts, and after a delivery further changes of that group wait until `group_interval` has
passed since it (`Grouping`; notify_store applies it).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from agent.report import format_time


class AlertState(enum.StrEnum):
    OK = "ok"
    DRIFTING = "drifting"
    FAILING = "failing"
    STALE = "stale"


class WebhookKind(enum.StrEnum):
    JSON = "json"
    SLACK = "slack"


@dataclass(frozen=True)
class Webhook:
    url: str
    kind: WebhookKind = WebhookKind.JSON


def mask_url(url: str) -> str:
    """A webhook URL as readers and logs see it: scheme, host and port only. The path, query and any
    user:password@ are what carry a webhook's secret (a Slack URL is a credential), so they become "…"."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    host = parts.hostname or "?"
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}{port}/…"


def scrub_url(text: str, url: str) -> str:
    """`text` (an error message, a receiver's answer) without `url` or its secret parts (path, query)."""
    parts = urlsplit(url)
    text = text.replace(url, mask_url(url))
    for secret in (f"{parts.path}?{parts.query}", parts.path, parts.query):
        if len(secret) >= 8:
            text = text.replace(secret, "/…")
    return text


def parse_webhook(text: str) -> Webhook:
    """'URL' or 'URL,slack' / 'URL,json' (from `serve --webhook`)."""
    url, kind = text.strip(), "json"
    head, sep, tail = url.rpartition(",")
    if sep and tail in ("json", "slack"):
        url, kind = head, tail
    well_formed = url.startswith(("http://", "https://")) and not any(c.isspace() for c in url)
    if not well_formed or not urlsplit(url).hostname:
        # the text may be a secret: show only how it starts
        raise ValueError(f"webhook: expected http(s)://HOST/PATH[,json|slack], got {url[:8]!r}...")
    return Webhook(url, WebhookKind(kind))


def alert_state(status: str, stale: bool) -> AlertState:
    """The alert state of a host with this status (agent.report.Status) that is or is not stale."""
    if stale:
        return AlertState.STALE
    if status in ("failed", "error"):
        return AlertState.FAILING
    if status == "drifted":
        return AlertState.DRIFTING
    return AlertState.OK  # in_sync, corrected, paused


@dataclass(frozen=True)
class HostChange:
    """One host whose state differs from the one last notified (`before` None: never seen)."""

    host: str
    before: AlertState | None
    after: AlertState
    since: datetime  # when the new state began (the run's finish time, or the due time when stale)
    commit: str | None
    task: str | None  # the first drifting task, for grouping


@dataclass(frozen=True)
class Alert:
    kind: str  # drifting | failing | stale | recovered
    task: str | None
    commit: str | None
    hosts: tuple[str, ...]
    at: datetime
    fingerprint: str
    since: tuple[datetime, ...] = ()  # when each host's new state began, in the order of `hosts`


@dataclass(frozen=True)
class Grouping:
    """How long alerts of one group are held (seconds): Alertmanager's group_wait and group_interval."""

    wait_s: float = 30.0
    interval_s: float = 300.0


def group_key(alert: Alert) -> str:
    """The group an alert belongs to across scans: its kind, task and commit (hashed, 32 hex digits)."""
    return _fingerprint([alert.kind, alert.task or "", alert.commit or ""])


def make_alert(kind: str, task: str | None, commit: str | None,
               members: list[tuple[str, datetime]]) -> Alert:
    """An alert over (host, since) members: sorted by host, one entry per host (its latest since)."""
    latest: dict[str, datetime] = {}
    for host, since in members:
        latest[host] = max(since, latest.get(host, since))
    hosts = sorted(latest)
    parts = [kind, task or "", commit or ""] + [f"{h}@{format_time(latest[h])}" for h in hosts]
    return Alert(kind, task, commit, tuple(hosts), max(latest.values()), _fingerprint(parts),
                 tuple(latest[h] for h in hosts))


def merge(held: Alert, new: Alert) -> Alert:
    """One alert with the hosts of both (of one group: same kind, task and commit)."""
    members = [*zip(held.hosts, held.since, strict=True), *zip(new.hosts, new.since, strict=True)]
    return make_alert(held.kind, held.task, held.commit, members)


def event_kind(change: HostChange) -> str | None:
    """What to tell people about a change, or None (a new host that is fine says nothing)."""
    if change.after is AlertState.OK:
        return None if change.before in (None, AlertState.OK) else "recovered"
    return change.after.value


def _fingerprint(parts: list[str]) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def group(changes: list[HostChange]) -> list[Alert]:
    """One alert per (kind, task, commit) among the changes of one scan."""
    buckets: dict[tuple[str, str | None, str | None], list[HostChange]] = {}
    for change in changes:
        kind = event_kind(change)
        if kind is not None:
            task = change.task if kind == "drifting" else None
            buckets.setdefault((kind, task, change.commit), []).append(change)
    ordered = sorted(buckets.items(), key=lambda kv: tuple(map(str, kv[0])))
    return [make_alert(kind, task, commit, [(c.host, c.since) for c in members])
            for (kind, task, commit), members in ordered]


VERBS = {"drifting": "started drifting", "failing": "started failing", "stale": "stopped reporting (stale)",
         "recovered": "recovered",
         # drift review (docs/drift-review.md): the task names the exception
         "exc_expiring": "drift accepted by an exception expiring within 7 days",
         "exc_expired": "drift reopened: its exception expired",
         "new_corrective": "has new corrective drift (review_notify)",
         "halted": "failed a rollout wave, which halted the rollout"}


def summary(alert: Alert) -> str:
    count = len(alert.hosts)
    who = alert.hosts[0] if count == 1 else f"{count} hosts"
    text = f"{who} {VERBS.get(alert.kind, alert.kind)}"
    if alert.task:
        text += f" on task {alert.task!r}"
    if alert.commit:
        text += f" at commit {alert.commit[:10]}"
    return text


def slack_escape(text: str) -> str:
    """Text as Slack shows it literally: &, < and > are Slack's control characters (`<!channel>`,
    `<https://x|label>`, `<@U123>`), so they go as the entities Slack decodes for display."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def payload(alert: Alert, kind: WebhookKind, base_url: str | None = None) -> dict[str, Any]:
    """The body sent to a webhook: generic JSON (values as reported, for programs), or a Slack message
    (every character of it literal: report values cannot mention, link or format; no link previews)."""
    if kind is WebhookKind.SLACK:
        more = len(alert.hosts) - 20
        shown = ", ".join(alert.hosts[:20]) + (f" and {more} more" if more > 0 else "")
        link = f"\n{base_url.rstrip('/')}/drift" if base_url and alert.kind == "drifting" else ""
        return {"text": slack_escape(f"[gitops] {summary(alert)}: {shown}{link}"),
                "unfurl_links": False, "unfurl_media": False}
    return {"fingerprint": alert.fingerprint, "kind": alert.kind, "task": alert.task, "commit": alert.commit,
            "hosts": list(alert.hosts), "count": len(alert.hosts), "at": format_time(alert.at),
            "summary": summary(alert)}
