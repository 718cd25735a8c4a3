"""`make demo` is the README's first command. One real run (two Ansible cycles) that is served, signed in
to, and stopped with SIGTERM, on a port an earlier connection left in TIME_WAIT; and a taken port."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT


def time_wait_port() -> int:
    """A port an earlier collector served (its listener had SO_REUSEADDR, as uvicorn's has), left with
    a connection in TIME_WAIT (the side that closes first keeps it) and no listener."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port: int = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its (port, client) pair goes to TIME_WAIT
    time.sleep(0.1)
    client.close()
    server.close()
    with socket.socket() as probe, pytest.raises(OSError):
        probe.bind(("127.0.0.1", port))  # without SO_REUSEADDR the port looks taken: the old fault
    return port


def demo(workdir: Path, port: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agent.demo", "--project", str(ROOT), "--workdir",
                             str(workdir), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **env}, cwd=ROOT)


def collector_pids(workdir: Path) -> list[int]:
    """Processes whose command line names the demo's database (its collector)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and "serve" in cmdline and str(workdir / "collector.db") in cmdline:
            found.append(int(proc.name))
    return found


@pytest.mark.heavy  # over 60 s alone: make test-heavy runs it (make test's budget, docs/testing.md)
@pytest.mark.ansible
@pytest.mark.timeout(900)
def test_demo_shows_the_loop_then_serves_the_ui_until_sigterm(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    port = time_wait_port()
    proc = demo(workdir, port)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Serving "):
                break
        out = "".join(lines)
        assert f"Serving http://127.0.0.1:{port}/ until Ctrl-C" in out, out
        assert "web01.example.com: corrected" in out
        assert "corrective   base / Message of the day" in out
        assert "-maintenance tonight -- bob" in out  # the diff of the hand edit
        # the fleet from the collector, as a table (no pages of JSON), then how to sign in
        assert re.search(r"^web01\.example\.com +corrected ", out, re.M), out
        assert f"  URL:           http://127.0.0.1:{port}/" in out
        token = re.search(r"^  reader token:  (gco_\S+)$", out, re.M)
        assert token, out
        assert "Sign in: open the URL and paste the reader token" in out
        assert out.count("\n{") == 0 and '"items"' not in out
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as ui:
            signed_in = ui.post("/login", data={"token": token.group(1), "next": "/"},
                                headers={"Origin": f"http://127.0.0.1:{port}"})  # as a browser sends
            assert signed_in.status_code == 303
            assert "web01.example.com" in ui.get("/").text
        assert collector_pids(workdir)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
        assert "demo: stopping the collector" in rest
    finally:
        if proc.poll() is None:  # the test failed before SIGTERM: leave no demo and no collector behind
            proc.kill()
            proc.wait()
            for pid in collector_pids(workdir):
                os.kill(pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()
    deadline = time.monotonic() + 10
    while collector_pids(workdir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert collector_pids(workdir) == [], "the collector outlived the demo"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    motd = (workdir / "root/etc/motd").read_text()
    assert motd == "web01.example.com\nManaged by gitops-agent. Local edits are reverted.\n"
    last = json.loads((workdir / "state/last_run.json").read_text())
    assert last["status"] == "corrected" and last["roles"] == ["base", "web"]
    assert (workdir / "reader-token").stat().st_mode & 0o777 == 0o600
    # nothing outside the sandbox: every managed path is under demo/root
    assert (workdir / "root/etc/gitops-demo/web/site.conf").read_text().count("workers 8;") == 1


def test_a_port_in_use_stops_the_demo_at_once(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.monotonic()
        proc = demo(tmp_path / "demo", port, DEMO_NO_SERVE="1")
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 1
    assert out == (f"demo: port {port} on 127.0.0.1 is in use (Address already in use); stop what listens "
                   "there, or give --port N\n")
    assert not (tmp_path / "demo").exists() and time.monotonic() - started < 30
