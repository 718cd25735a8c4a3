"""The trusted proxy header behind a real nginx (issue 15), on SQLite and PostgreSQL.

`--trusted-proxy` must name the address of the socket's peer. uvicorn used to replace that address with
the first X-Forwarded-For value whenever the peer was in $FORWARDED_ALLOW_IPS, so that:
- the documented setup (a local nginx that authenticates people and adds X-Forwarded-For) was always
  refused: the collector saw the browser's address, not the proxy's;
- a client on 127.0.0.2 that wrote `X-Forwarded-For: 127.0.0.1` became any reader it named.

Both setups run here for real: nginx (Debian's package, started by the test on 127.0.0.1 with its
configuration in tmp_path, never as a service) in front of `gitops-collector serve`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.report import to_json
from tests.factory import make_report
from tests.live_collector import CollectorProcess, free_port, token

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
USER_HEADER = "X-Forwarded-User"


def nginx_or_skip() -> str:
    if not Path(NGINX).exists():
        if os.environ.get("CI"):
            pytest.fail("nginx is missing under CI (.ci/system-deps installs it)")
        pytest.skip("nginx is not installed (.ci/system-deps installs it)")
    return NGINX


class Nginx:
    """nginx in the foreground with `server` as its only server block; logs to stderr, files in `tmp`."""

    def __init__(self, tmp: Path, server: str, port: int | None = None) -> None:
        self.tmp = tmp
        self.port = port or free_port()
        temp = "\n".join(f"  {kind}_temp_path {tmp}/{kind};" for kind in
                         ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        # Started by root, nginx's workers would switch to "nobody", who cannot read tmp_path (0700).
        user = "user root root;" if os.geteuid() == 0 else ""
        (tmp / "nginx.conf").write_text(f"""
daemon off;
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
{temp}
  proxy_buffering off;
  proxy_request_buffering off;
  server {{
    listen 127.0.0.1:{self.port};
{server.replace("{tmp}", str(tmp))}
  }}
}}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        self.proc = subprocess.Popen([nginx_or_skip(), "-p", str(self.tmp), "-e", "stderr", "-c",
                                      str(self.tmp / "nginx.conf")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("nginx did not start")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def client_from(address: str, base_url: str) -> httpx.Client:
    """A client whose connections come from `address` (any 127.x.y.z is this machine's loopback)."""
    return httpx.Client(base_url=base_url, timeout=10, transport=httpx.HTTPTransport(local_address=address))


@pytest.fixture
def proxy_port() -> int:
    return free_port()


@pytest.fixture
def collector(db_url, monkeypatch, proxy_port) -> Iterator[CollectorProcess]:
    """The collector trusting X-Forwarded-User from 127.0.0.1 only, with uvicorn told (through its own
    setting) to believe X-Forwarded-For from anyone: the setting that made the spoof work. Browsers
    reach it at the proxy's address (`--public-url`)."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    process = CollectorProcess(db_url, None, "--trusted-header", USER_HEADER, "--trusted-proxy", "127.0.0.1",
                               "--public-url", f"http://127.0.0.1:{proxy_port}").start()
    yield process
    process.stop()


def test_a_local_nginx_that_authenticates_people_is_trusted(collector, tmp_path, db_url, proxy_port):
    """The documented setup: nginx on the collector's machine checks the password and sets the header
    (overwriting the client's), adding X-Forwarded-For as proxies do. A browser on 127.0.0.3 (not a
    trusted address) reaches the collector only through it."""
    (tmp_path / "htpasswd").write_text("alice:{PLAIN}wonderland\n")
    upstream = f"""
    location / {{
      auth_basic "collector";
      auth_basic_user_file {{tmp}}/htpasswd;
      proxy_pass http://127.0.0.1:{collector.port};
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header {USER_HEADER} $remote_user;
    }}
    location /api/v1/reports {{
      proxy_pass http://127.0.0.1:{collector.port};
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header {USER_HEADER} "";
    }}"""
    ingest = token(db_url, "web01")
    with Nginx(tmp_path, upstream, proxy_port) as proxy, client_from("127.0.0.3", proxy.url) as browser:
        agent = {"Authorization": f"Bearer {ingest}"}
        assert browser.post("/api/v1/reports", content=to_json(make_report("web01")), headers=agent).status_code == 201
        assert browser.get("/api/v1/hosts").status_code == 401  # nginx asks for the password
        alice = browser.get("/api/v1/hosts", auth=("alice", "wonderland"),
                            headers={USER_HEADER: "mallory", "X-Forwarded-For": "127.0.0.1"})
        assert alice.status_code == 200, alice.text
        assert [h["host"] for h in alice.json()["items"]] == ["web01"]
        page = browser.get("/", auth=("alice", "wonderland"))
        assert page.status_code == 200 and "alice" in page.text and "mallory" not in page.text
        # with the header on, the UI needs no login; a reader token still logs in through the proxy,
        # from the origin the browser sees (serve --public-url names it), and only from it
        reader = token(db_url, "--reader", "ops")
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        elsewhere = browser.post("/login", content=f"token={reader}", auth=("alice", "wonderland"),
                                 headers={**form, "Origin": "http://127.0.0.1:9"})
        assert elsewhere.status_code == 403
        here = browser.post("/login", content=f"token={reader}", auth=("alice", "wonderland"),
                            headers={**form, "Origin": proxy.url})
        assert here.status_code == 303 and "gitops_session=" in here.headers["set-cookie"]


def test_a_header_from_an_address_that_is_not_a_trusted_proxy_is_ignored(collector, tmp_path):
    """Spoofing: a client on 127.0.0.2 names a reader and claims, in X-Forwarded-For, to come from the
    trusted proxy; directly, and through a proxy (nginx on 127.0.0.2, not trusted) that passes the
    client's headers on."""
    spoof = {USER_HEADER: "admin", "X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1",
             "Forwarded": "for=127.0.0.1"}
    with client_from("127.0.0.2", collector.url) as direct:
        answer = direct.get("/api/v1/hosts", headers=spoof)
        assert answer.status_code == 401, answer.text
        assert direct.get("/", headers=spoof).status_code == 303  # the UI sends it to the login form
    relay = f"""
    location / {{
      proxy_pass http://127.0.0.1:{collector.port};
      proxy_bind 127.0.0.2;
    }}"""
    with Nginx(tmp_path, relay) as proxy, client_from("127.0.0.1", proxy.url) as client:
        assert client.get("/api/v1/hosts", headers=spoof).status_code == 401
        assert client.get("/healthz").status_code == 200  # the relay itself works
