"""`make demo` is the README's first command: run it the way CI would (DEMO_NO_SERVE=1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.ansible


def test_demo_shows_first_apply_then_corrective_drift(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "agent.demo", "--project", str(ROOT), "--workdir",
                           str(workdir), "--port", "0"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DEMO_NO_SERVE": "1"}, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "web01.example.com: corrected" in out
    assert "corrective   base / Message of the day" in out
    assert "-maintenance tonight -- bob" in out  # the diff of the hand edit
    motd = (workdir / "root/etc/motd").read_text()
    assert motd == "web01.example.com\nManaged by gitops-agent. Local edits are reverted.\n"
    assert '"host": "web01.example.com"' in out and '"status": "corrected"' in out  # the collector has it
    last = json.loads((workdir / "state/last_run.json").read_text())
    assert last["status"] == "corrected" and last["roles"] == ["base", "web"]
    # nothing outside the sandbox: every managed path is under demo/root
    assert (workdir / "root/etc/gitops-demo/web/site.conf").read_text().count("workers 8;") == 1
