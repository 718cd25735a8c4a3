"""Several collectors on one PostgreSQL behind a real haproxy (issue 20, docs/scale.md "Several collectors
on one PostgreSQL"): ingest, UI and API through any of them; sessions, CSRF tokens and token revocation
agree across processes; the leader-only work (alerts, webhook deliveries) runs in exactly one process, and
when the leader is SIGKILLed (even mid-delivery) another takes over with no alert lost and none sent twice
to a receiver that drops repeated delivery ids.

haproxy (Debian's package, .ci/system-deps) runs in the foreground on 127.0.0.1 with its configuration in
tmp_path; the webhook receiver is a real HTTP server in this process that records every request."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.collector import db, tokens
from agent.collector.tokens import TokenKind
from agent.report import Status, to_json
from tests.factory import make_report
from tests.live_collector import CollectorProcess, free_port, fresh_database

pytestmark = pytest.mark.postgres

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
COLLECTORS = 3
SLOW_S = 0.6  # how long the receiver takes to answer (the collectors' --notify-interval is 0.5 s)


def make_tokens(db_url: str, names: list[str], kind: TokenKind = TokenKind.INGEST) -> dict[str, str]:
    """{name: secret}, made in this process (a CLI run per token costs seconds on a busy machine)."""
    engine = db.create(db_url)
    try:
        return {n: tokens.create(engine, kind, n, now=datetime.now(UTC))[1] for n in names}
    finally:
        engine.dispose()


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# -- a webhook receiver that counts what it gets ------------------------------------------------

@dataclass
class Receiver:
    """Records (X-Gitops-Delivery, body) of every POST; the first alert naming host `hold` waits for
    `release` before it is answered."""

    got: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    hold: str | None = None
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.got.append((self.headers.get("X-Gitops-Delivery", ""), body))
                    hold = receiver.hold in body["hosts"]
                    if hold:
                        receiver.hold = None
                if hold:  # the leader sent it and now waits for our answer: the test kills it meanwhile
                    receiver.held.set()
                    receiver.release.wait(30)
                else:  # a slow receiver: longer than a notify round, so a second sender would show
                    time.sleep(SLOW_S)
                try:
                    self.send_response(200)
                    self.end_headers()
                except OSError:
                    pass  # the sender died while we held its request

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def of(self, hosts: set[str]) -> list[tuple[str, dict[str, Any]]]:
        """What was received about any of `hosts`."""
        with self.lock:
            return [(i, body) for i, body in self.got if hosts & set(body["hosts"])]


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), rec.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec, f"http://127.0.0.1:{server.server_address[1]}/hook"
    rec.release.set()
    server.shutdown()
    server.server_close()


# -- haproxy ------------------------------------------------------------------------------------

class Haproxy:
    """haproxy in the foreground: round robin over the collectors, health-checked on /healthz; every
    answer names the collector that gave it in `X-Served-By`."""

    def __init__(self, tmp: Path, backends: list[int]) -> None:
        self.port = free_port()
        servers = "\n".join(f"  server c{i} 127.0.0.1:{port} check inter 300ms fall 2 rise 1"
                            for i, port in enumerate(backends))
        self.config = tmp / "haproxy.cfg"
        self.config.write_text(f"""global
  maxconn 512
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  retries 2
  option redispatch
frontend collectors
  bind 127.0.0.1:{self.port}
  default_backend collectors
backend collectors
  balance roundrobin
  option httpchk GET /healthz
  http-check expect status 200
  http-response set-header X-Served-By %s
{servers}
""")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Haproxy:
        if not Path(HAPROXY).exists():
            if os.environ.get("CI"):
                pytest.fail("haproxy is missing under CI (.ci/system-deps installs it)")
            pytest.skip("haproxy is not installed (.ci/system-deps installs it)")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        wait_for("haproxy to serve", self._up, 15)
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"haproxy exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


# -- the cluster --------------------------------------------------------------------------------

@dataclass
class Cluster:
    db_url: str
    collectors: list[CollectorProcess]
    proxy: Haproxy

    def roles(self) -> dict[int, bool | None]:
        """What /healthz of each live collector says of `leader` (None: it has not tried yet)."""
        found: dict[int, bool | None] = {}
        for i, c in enumerate(self.collectors):
            if c.proc is None:
                continue
            try:
                found[i] = httpx.get(f"{c.url}/healthz", timeout=2).json().get("leader")
            except httpx.HTTPError:
                found[i] = None
        return found

    def revive(self) -> None:
        """Start again any collector a test killed (it comes back as a follower)."""
        dead = [c for c in self.collectors if c.proc is None]
        for c in dead:
            c.start()
        if dead:
            time.sleep(1.0)  # haproxy's health check (every 300 ms) sees it up again

    def one_leader(self) -> int:
        """The index of the one leader, once every live collector has tried and exactly one leads."""
        def settled() -> bool:
            roles = self.roles()
            return None not in roles.values() and list(roles.values()).count(True) == 1
        wait_for("exactly one leader", settled)
        (leader,) = [i for i, leads in self.roles().items() if leads]
        return leader


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, receiver: tuple[Receiver, str]) -> Iterator[Cluster]:
    """One cluster for the module (starting three collectors costs seconds); a test that kills one of them
    leaves it for `Cluster.revive` to start again."""
    _, hook_url = receiver
    tmp_path = tmp_path_factory.mktemp("scale_out")
    with fresh_database("postgresql", tmp_path) as db_url:
        engine = db.create(db_url)
        db.prepare(engine)
        engine.dispose()
        common = ("--webhook", hook_url, "--notify-interval", "0.5s", "--alert-group-wait", "0s",
                  "--alert-group-interval", "0s", "--prune-older-than", "30d", "--stale-grace", "1h")
        # two with group commit (a cached token map), one without: both paths must see revocation
        collectors = [CollectorProcess(db_url, None, *common, *(("--group-commit",) if i < 2 else ()))
                      for i in range(COLLECTORS)]
        try:
            with ThreadPoolExecutor(COLLECTORS) as pool:
                list(pool.map(lambda c: c.start(), collectors))
            with Haproxy(tmp_path, [c.port for c in collectors]) as proxy:
                yield Cluster(db_url, collectors, proxy)
        finally:
            for c in collectors:
                c.kill()


def _report(host: str, status: Status = Status.FAILED, **kw: Any) -> str:
    # a commit of its own per host: one alert per host (alerts group by kind, task and commit)
    commit = hashlib.sha1(host.encode()).hexdigest()
    return to_json(make_report(host, status=status, commit=commit, finished_at=datetime.now(UTC), **kw))


def test_ingest_ui_and_api_work_through_any_collector(cluster: Cluster) -> None:
    cluster.revive()
    proxy = cluster.proxy.url
    hosts = [f"web{i:02d}.example.com" for i in range(6)]
    secrets = make_tokens(cluster.db_url, hosts)
    reader = make_tokens(cluster.db_url, ["ops"], TokenKind.REVIEWER)["ops"]
    served: set[str] = set()
    with httpx.Client(base_url=proxy, timeout=10) as client:
        for h in hosts:
            r = client.post("/api/v1/reports", content=_report(h, Status.DRIFTED),
                            headers={"Authorization": f"Bearer {secrets[h]}",
                                     "Content-Type": "application/json"})
            assert r.status_code == 201, r.text
            served.add(r.headers["X-Served-By"])
        for _ in range(COLLECTORS):
            r = client.get("/api/v1/hosts", headers={"Authorization": f"Bearer {reader}"})
            assert r.status_code == 200 and set(hosts) <= {x["host"] for x in r.json()["items"]}
            served.add(r.headers["X-Served-By"])
    assert served == {f"c{i}" for i in range(COLLECTORS)}  # round robin reached every collector

    # a UI session made by one collector is good on the others; its CSRF token too; logout ends it on all
    a, b, c = (x.url for x in cluster.collectors)
    with httpx.Client(base_url=a, timeout=10) as browser:
        r = browser.post("/login", data={"token": reader, "next": "/drift"}, headers={"Origin": a})
        assert r.status_code == 303
        cookie = browser.cookies["gitops_session"]
    cookies = {"gitops_session": cookie}
    page = httpx.get(f"{b}/hosts/{hosts[1]}", cookies=cookies, timeout=10)
    assert page.status_code == 200, page.text
    form = re.search(r'action="/drift/items/(\d+)/ack".*?name="csrf" value="([0-9a-f]+)"', page.text)
    assert form is not None, page.text
    item, csrf = form.groups()
    bad = httpx.post(f"{c}/drift/items/{item}/ack", cookies=cookies, headers={"Origin": c}, timeout=10,
                     data={"csrf": "0" * 64, "reason": "known", "next": "/drift"})
    assert bad.status_code == 403
    ack = httpx.post(f"{c}/drift/items/{item}/ack", cookies=cookies, headers={"Origin": c}, timeout=10,
                     data={"csrf": csrf, "reason": "known", "next": "/drift"})
    assert ack.status_code == 303, ack.text
    drift = httpx.get(f"{a}/api/v1/hosts/{hosts[1]}", headers={"Authorization": f"Bearer {reader}"}, timeout=10)
    assert [d["state"] for d in drift.json()["drift"]] == ["acknowledged"], drift.text
    r = httpx.post(f"{a}/logout", cookies=cookies, headers={"Origin": a}, timeout=10)
    assert r.status_code == 303
    for url in (a, b, c):
        assert httpx.get(f"{url}/drift", cookies=cookies, timeout=10).status_code == 303  # to /login

    # a revoked ingest token is refused at once by every collector, cached token maps or not
    host = hosts[0]
    for x in cluster.collectors:  # each one has just checked (and, with group commit, cached) the token
        r = httpx.post(f"{x.url}/api/v1/reports", content=_report(host, Status.IN_SYNC), timeout=10,
                       headers={"Authorization": f"Bearer {secrets[host]}", "Content-Type": "application/json"})
        assert r.status_code == 201, r.text
    engine = db.create(cluster.db_url)
    assert tokens.revoke(engine, host, now=datetime.now(UTC)) == 1  # what `token revoke` does
    engine.dispose()
    for x in cluster.collectors:
        r = httpx.post(f"{x.url}/api/v1/reports", content=_report(host, Status.IN_SYNC), timeout=10,
                       headers={"Authorization": f"Bearer {secrets[host]}", "Content-Type": "application/json"})
        assert r.status_code == 401, (x.url, r.text)
    # and so is a revoked reader (here: reviewer) token, on the API and for a new session
    engine = db.create(cluster.db_url)
    assert tokens.revoke(engine, "ops", now=datetime.now(UTC)) == 1
    engine.dispose()
    for x in cluster.collectors:
        r = httpx.get(f"{x.url}/api/v1/hosts", headers={"Authorization": f"Bearer {reader}"}, timeout=10)
        assert r.status_code == 401, (x.url, r.text)
        r = httpx.post(f"{x.url}/login", data={"token": reader, "next": "/"}, headers={"Origin": x.url},
                       timeout=10)
        assert r.status_code == 401, (x.url, r.text)


def test_alerts_go_out_once_across_a_leader_killed_mid_delivery(
        cluster: Cluster, receiver: tuple[Receiver, str]) -> None:
    rec, _ = receiver
    cluster.revive()
    proxy = cluster.proxy.url
    first = cluster.one_leader()
    reader = make_tokens(cluster.db_url, ["prom"], TokenKind.READER)["prom"]
    gauges = [re.search(r"^gitops_collector_leader (\d)$", httpx.get(
        f"{c.url}/metrics", headers={"Authorization": f"Bearer {reader}"}, timeout=10).text, re.M)
        for c in cluster.collectors]
    assert [int(g.group(1)) if g else None for g in gauges] == [int(i == first) for i in range(COLLECTORS)]

    def post(hosts: list[str]) -> None:
        secrets = make_tokens(cluster.db_url, hosts)
        with httpx.Client(base_url=proxy, timeout=10) as client:
            for h in hosts:
                r = client.post("/api/v1/reports", content=_report(h),
                                headers={"Authorization": f"Bearer {secrets[h]}",
                                         "Content-Type": "application/json"})
                assert r.status_code == 201, r.text

    def hosts_got(hosts: set[str]) -> list[str]:
        return sorted(h for _, body in rec.of(hosts) for h in body["hosts"])

    # 1. alerts of reports spread over the three collectors go out once each, from the leader
    before = {f"a{i}.example.com" for i in range(4)}
    post(sorted(before))
    wait_for("the first alerts", lambda: set(hosts_got(before)) == before)
    time.sleep(2 * SLOW_S)  # a second sender of any of them would have been heard by now
    assert hosts_got(before) == sorted(before)  # each once

    # 2. the leader is SIGKILLed while the receiver holds its delivery of one alert
    victim = "killed-mid-send.example.com"
    rec.hold = victim
    post([victim])
    assert rec.held.wait(20), "the leader never sent the alert"
    cluster.collectors[first].kill(signal.SIGKILL)
    killed_at = time.monotonic()
    rec.release.set()
    second = cluster.one_leader()
    took = time.monotonic() - killed_at
    assert second != first
    # followers try every --notify-interval (0.5 s here); the bound leaves room for a loaded machine
    assert took < 10, f"a new leader took {took:.1f}s"

    # 3. the new leader resends the unfinished delivery (same id) and sends the alerts that came since
    after = {f"b{i}.example.com" for i in range(3)}
    post(sorted(after))
    ours = before | after | {victim}
    wait_for("every alert", lambda: hosts_got(ours) == sorted([*ours, victim]))  # the victim's twice
    time.sleep(2)  # several more notify rounds of the leader: nothing more may come
    got = rec.of(ours)
    assert hosts_got(ours) == sorted([*ours, victim])
    ids = [i for i, _ in got]
    assert all(ids) and len(set(ids)) == len(ours)  # one delivery id per alert
    # the one repeat: the delivery the dead leader had sent but not recorded, resent under the same id
    assert [body["hosts"] for i, body in got if ids.count(i) > 1] == [[victim], [victim]]
    listing = httpx.get(f"{proxy}/api/v1/webhooks?limit=100", headers={"Authorization": f"Bearer {reader}"},
                        timeout=10).json()
    statuses = [d["status"] for d in listing["items"] if any(h in d["summary"] for h in ours)]
    assert statuses == ["delivered"] * len(ours)


def test_the_documented_haproxy_configuration_is_valid(tmp_path: Path) -> None:
    """docs/examples/haproxy.cfg, with a throwaway certificate in place of the site's, passes `haproxy -c`."""
    if not Path(HAPROXY).exists():
        if os.environ.get("CI"):
            pytest.fail("haproxy is missing under CI (.ci/system-deps installs it)")
        pytest.skip("haproxy is not installed (.ci/system-deps installs it)")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "1", "-subj", "/CN=collector"],
                   cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "collector.pem").write_text((tmp_path / "cert.pem").read_text() + (tmp_path / "key.pem").read_text())
    example = (Path(__file__).parents[2] / "docs" / "examples" / "haproxy.cfg").read_text()
    assert "/etc/haproxy/collector.pem" in example
    config = tmp_path / "haproxy.cfg"
    config.write_text(example.replace("/etc/haproxy/collector.pem", str(tmp_path / "collector.pem")))
    done = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
