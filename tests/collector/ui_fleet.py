"""A realistic fleet for the browser tests and demos: ~40 hosts in several roles, two commits rolling out,
drift of every kind with real diffs, failures, a paused host, stale hosts and one hostile host whose report
tries to inject markup everywhere. Sent through the ingest API with each host's own token."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import Engine

from agent.collector import tokens
from agent.collector.tokens import TokenKind
from agent.report import Diff, DriftItem, DriftKind, ErrorItem, Pause, Phase, Report, Status, to_json
from tests.factory import make_report

XSS = "<script>alert(1)</script>"
EVIL_HOST = "evil01.dc9.example.com"  # host names cannot carry markup (agent.collector.hostnames)
OLD = "3f9a1c07d2b84e6f9a0c1d2e3f4a5b6c7d8e9f01"
EVIL_COMMIT = "e" * 40
NEW = "8c2e5b9d0f1a4c3e7b6d5a4f3e2d1c0b9a8f7e6d"
SYSCTL_BEFORE = "vm.swappiness = 60\nnet.core.somaxconn = 128\n"
SYSCTL_AFTER = "vm.swappiness = 10\nnet.core.somaxconn = 4096\n"
NGINX_BEFORE = "worker_processes 2;\nevents { worker_connections 512; }\nhttp {\n  gzip off;\n}\n"
NGINX_AFTER = "worker_processes auto;\nevents { worker_connections 4096; }\nhttp {\n  gzip on;\n}\n"


def item(task: str, kind: DriftKind, role: str, path: str, before: str, after: str,
         since: datetime) -> DriftItem:
    return DriftItem(play=f"{role} servers", task=task, role=role, module="ansible.builtin.template",
                     kind=kind, diffs=(Diff(path, before, after),), first_seen_at=since)


def _plan(now: datetime) -> list[tuple[str, Status, str, tuple[str, ...]]]:
    """(host, status, commit, roles) for each host."""
    plan = []
    for i in range(1, 13):
        status = Status.DRIFTED if i in (3, 7, 9) else Status.FAILED if i == 11 else Status.IN_SYNC
        plan.append((f"web{i:02d}.dc1.example.com", status, NEW if i <= 9 else OLD, ("web", "base")))
    for i in range(1, 5):
        status = Status.CORRECTED if i == 2 else Status.ERROR if i == 4 else Status.IN_SYNC
        plan.append((f"db{i:02d}.dc1.example.com", status, NEW if i < 3 else OLD, ("db", "base")))
    for i in range(1, 9):
        status = Status.DRIFTED if i % 3 == 0 else Status.IN_SYNC
        plan.append((f"worker{i:02d}.dc2.example.com", status, NEW, ("worker", "base")))
    plan.append(("lb01.dc1.example.com", Status.PAUSED, OLD, ("lb", "base")))
    plan.append(("lb02.dc1.example.com", Status.IN_SYNC, NEW, ("lb", "base")))
    return plan


def _drift_for(host: str, status: Status, now: datetime) -> tuple[DriftItem, ...]:
    if status not in (Status.DRIFTED, Status.CORRECTED):
        return ()
    since = now - timedelta(hours=5)
    if host.startswith("web"):
        return (item("nginx: main config", DriftKind.CORRECTIVE, "web", "/etc/nginx/nginx.conf",
                     NGINX_BEFORE, NGINX_AFTER, since),
                item("sysctl: tune network", DriftKind.INTENTIONAL, "base", "/etc/sysctl.d/60-net.conf",
                     SYSCTL_BEFORE, SYSCTL_AFTER, since + timedelta(hours=2)))
    if host.startswith("worker"):
        return (item("sysctl: tune network", DriftKind.INTENTIONAL, "base", "/etc/sysctl.d/60-net.conf",
                     SYSCTL_BEFORE, SYSCTL_AFTER, since),
                DriftItem("worker servers", "cron: cleanup job", "worker", "ansible.builtin.command",
                          DriftKind.UNVERIFIABLE, first_seen_at=since))
    return (item("postgres: pg_hba", DriftKind.RECURRING, "db", "/etc/postgresql/15/main/pg_hba.conf",
                 "host all all 10.0.0.0/8 md5\n", "host all all 10.0.0.0/8 scram-sha-256\n", since),)


def _subject(report: Report, subject: str) -> Report:
    return replace(report, source=replace(report.source, subject=subject))


def _latest(host: str, status: Status, commit: str, roles: tuple[str, ...], now: datetime) -> Report:
    report = make_report(host, status=status, commit=commit, roles=roles,
                         finished_at=now - timedelta(minutes=3), drift=_drift_for(host, status, now))
    report = _subject(report, "Raise nginx worker connections" if commit == NEW else "Initial fleet baseline")
    if status is Status.ERROR:
        report = replace(report, phase_reached=Phase.FETCH, apply=None,
                         errors=(ErrorItem(Phase.FETCH, "git fetch: could not resolve host"),))
    if status is Status.PAUSED:
        report = replace(report, pause=Pause("load balancer migration, ticket OPS-1234", by="alice",
                                             since=now - timedelta(hours=1), until=now + timedelta(hours=3)))
    return report


def _history(latest: Report, runs: int) -> list[Report]:
    statuses = (Status.IN_SYNC, Status.IN_SYNC, Status.CORRECTED, Status.IN_SYNC, Status.DRIFTED,
                Status.IN_SYNC)
    older = [_subject(make_report(latest.host, status=statuses[i % len(statuses)], commit=OLD,
                                  roles=latest.roles,
                                  finished_at=latest.finished_at - timedelta(minutes=30 * (i + 1))),
                      "Initial fleet baseline") for i in range(runs)]
    return [*reversed(older), latest]


def _evil(now: datetime) -> Report:
    hostile = DriftItem(play=f"play {XSS}", task=f"task {XSS}", role="web", module="template",
                        kind=DriftKind.CORRECTIVE, first_seen_at=now - timedelta(hours=1),
                        diffs=(Diff(f"/etc/{XSS}", "a\n", f'a\n{XSS}\n<img src=x onerror="alert(2)">\n'),))
    report = make_report(EVIL_HOST, status=Status.DRIFTED, drift=(hostile,), roles=("web", f"role{XSS}"),
                         commit=EVIL_COMMIT, finished_at=now - timedelta(minutes=2),
                         pause=Pause(f"reason {XSS}"))
    return _subject(report, f"subject {XSS}")


def _stale(now: datetime) -> list[Report]:
    """Hosts that promise to report every second: stale as soon as the grace (1s in the tests) passes."""
    return [make_report(f"legacy{i:02d}.dc3.example.com", commit=OLD, roles=("base",), interval_s=1,
                        splay_s=1, finished_at=now - timedelta(days=i)) for i in range(1, 4)]


def reports(now: datetime, history: int = 6) -> list[Report]:
    sent: list[Report] = []
    for host, status, commit, roles in _plan(now):
        sent += _history(_latest(host, status, commit, roles, now), history)
    return [*sent, _evil(now), *_stale(now)]


def seed(engine: Engine, base_url: str, now: datetime | None = None) -> dict[str, Report]:
    """Create each host's ingest token and send its reports; returns the latest report per host."""
    now = now or datetime.now(UTC)
    secrets: dict[str, str] = {}
    latest: dict[str, Report] = {}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for report in reports(now):
            if report.host not in secrets:
                secrets[report.host] = tokens.create(engine, TokenKind.INGEST, report.host, now=now)[1]
            response = client.post("/api/v1/reports", content=to_json(report),
                                   headers={"Authorization": f"Bearer {secrets[report.host]}"})
            assert response.status_code == 201, response.text
            latest[report.host] = report
    return latest
