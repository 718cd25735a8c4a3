"""The helpers of bench/scale_out.py: CPU accounting across processes that come and go, and its haproxy
(a real one, Debian's package, in front of two tiny HTTP servers) spreading requests round robin."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.scale_out import Haproxy, cpu_of, spent


def test_spent_counts_new_processes_whole_and_known_ones_by_difference() -> None:
    assert spent({1: 2.0, 2: 5.0}, {1: 2.5, 2: 5.0, 3: 0.25}) == pytest.approx(0.75)
    assert spent({1: 2.0}, {}) == 0.0  # a process gone by the second reading adds nothing


def test_cpu_of_reads_live_processes_and_leaves_out_gone_ones() -> None:
    # a pid above the kernel's pid_max never exists (a reaped child's pid could be reused at once by the
    # other tests' processes, as it once was)
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    found = cpu_of([os.getpid(), gone])
    assert list(found) == [os.getpid()] and found[os.getpid()] > 0


@pytest.fixture
def backends() -> Iterator[tuple[list[int], list[str]]]:
    """Two HTTP servers answering every GET with 200 and their name; the names of what they served."""
    served: list[str] = []
    servers = []
    for name in ("a", "b"):
        class Handler(BaseHTTPRequestHandler):
            me = name

            def do_GET(self) -> None:
                if self.path != "/healthz":
                    served.append(self.me)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield [s.server_address[1] for s in servers], served
    for s in servers:
        s.shutdown()
        s.server_close()


def test_haproxy_spreads_requests_over_every_backend(tmp_path: Path,
                                                     backends: tuple[list[int], list[str]]) -> None:
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        if os.environ.get("CI"):
            pytest.fail("haproxy is missing under CI (.ci/system-deps installs it)")
        pytest.skip("haproxy is not installed (.ci/system-deps installs it)")
    ports, served = backends
    with Haproxy(tmp_path, ports, maxconn=64) as proxy:
        with httpx.Client(base_url=proxy.url, timeout=5) as client:
            statuses = [client.get("/static/ui.css").status_code for _ in range(4)]
        assert proxy.proc is not None and cpu_of([proxy.proc.pid])  # what the bench reads of it
    assert statuses == [200] * 4
    assert sorted(served) == ["a", "a", "b", "b"]  # round robin
    assert proxy.proc is not None and proxy.proc.poll() is not None  # stopped at the end of the block
