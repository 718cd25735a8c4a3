"""The agent delivering to a real collector on 127.0.0.1: spooled while it is down, delivered exactly
once when it is back, and what the collector shows matches the host."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import GitRepo
from tests.live_collector import CollectorProcess, collector_cli, free_port, token

pytestmark = pytest.mark.ansible


@pytest.mark.heavy  # over 60 s alone: make test-heavy runs it (make test's budget, docs/testing.md)
def test_reports_wait_in_the_outbox_then_arrive_once(cli, write_config, app_repo: GitRepo,
                                                     tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'collector.db'}"
    subprocess.run([sys.executable, "-m", "agent.collector.cli", "migrate", "--db", db], check=True,
                   capture_output=True)
    token_file = tmp_path / "token"
    token_file.write_text(token(db, "testhost") + "\n")
    token_file.chmod(0o600)
    reader = token(db, "--reader", "ops")
    port = free_port()
    config = write_config(app_repo.path, collector={"url": f"http://127.0.0.1:{port}",
                                                    "token_file": str(token_file)})

    first = cli("run", "--json", "--config", str(config))  # the collector is down: applied all the same
    assert first.code == 0 and first.report["status"] == "corrected"
    assert (tmp_path / "state/syntax-checked").read_text().strip()  # the next cycles of this commit skip it
    assert first.err.startswith("gitops-agent: warning: the report was not delivered (ConnectError")
    assert "1 report(s) wait in the outbox" in first.err and len(first.err.splitlines()) == 1
    waiting = cli("outbox", "--config", str(config))
    assert waiting.code == 2 and "1 waiting, 0 quarantined" in waiting.out
    status = cli("status", "--config", str(config)).out
    assert "outbox: 1 report(s) waiting for the collector; warning: the last delivery failed" in status
    assert "ConnectError" in status
    down = cli("doctor", "--config", str(config))  # local checks pass; the network one says what is wrong
    assert down.code == 1, down.out
    assert re.search(r"^ok\s+inventory\s+host testhost has roles app", down.out, re.M), down.out
    assert re.search(r"^ok\s+source\s+ref 'main' is at", down.out, re.M), down.out
    assert re.search(rf"^FAIL\s+collector\s+http://127\.0\.0\.1:{port}: ConnectError", down.out, re.M), down.out

    collector = CollectorProcess(db, port).start()
    try:
        flushed = cli("outbox", "--flush", "--config", str(config))
        assert flushed.code == 0 and "delivered 1," in flushed.out
        assert "warning" not in cli("status", "--config", str(config)).out
        up = cli("doctor", "--json", "--config", str(config))
        assert up.code == 0, up.out
        assert {c["check"]: c["result"] for c in json.loads(up.out)}["collector token"] == "ok"
        second = cli("run", "--check", "--json", "--config", str(config))  # delivered right away
        assert second.code == 0 and not second.err.strip()
        headers = {"Authorization": f"Bearer {reader}"}
        host = httpx.get(f"{collector.url}/api/v1/hosts/testhost", headers=headers).json()
        runs = httpx.get(f"{collector.url}/api/v1/hosts/testhost/runs", headers=headers).json()
        collector_cli(db, "token", "revoke", "testhost")
        revoked = cli("doctor", "--config", str(config))
        assert revoked.code == 1
        assert re.search(r"^FAIL\s+collector token\s+refused: HTTP 401", revoked.out, re.M), revoked.out
    finally:
        collector.stop()
    assert host["last_run_id"] == second.report["run_id"] or host.get("status") == "in_sync"
    run_ids = {r["run_id"] for r in runs["items"]}
    assert run_ids == {first.report["run_id"], second.report["run_id"]}
