"""The faults tier: the agent killed at every step and at random, out of disk, given corrupt state, fed
hostile trees, leaking secrets. Shared pieces: a cheap config repo (no facts, one or two tasks), a real
collector on 127.0.0.1 with a ledger of what it stored, and the agent run as its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, GitRepo, make_repo
from tests.live_collector import CollectorProcess, token

HOST = "testhost"
INVENTORY = "all:\n  children:\n    app:\n      hosts:\n        testhost:\n"


def playbook(*tasks: str) -> str:
    body = "".join(tasks) or COPY_TASK
    return f"- name: App\n  hosts: app\n  gather_facts: false\n  tasks:\n{body}"


COPY_TASK = """\
    - name: App config
      ansible.builtin.copy:
        dest: "{{ target_root }}/app.conf"
        content: "version=1\\n"
        mode: "0644"
"""


def cheap_repo(path: Path, *tasks: str, files: dict[str, str] | None = None) -> GitRepo:
    return make_repo(path, {"playbooks/app.yml": playbook(*tasks), "inventory/hosts.yml": INVENTORY,
                            **(files or {})})


@dataclass
class Collector:
    process: CollectorProcess
    token_file: Path
    reader: str

    @property
    def url(self) -> str:
        return self.process.url

    def runs(self) -> dict[str, dict[str, Any]]:
        """Every run the collector stored for the test host: run_id -> summary."""
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            page = httpx.get(f"{self.url}/api/v1/hosts/{HOST}/runs", params={"limit": 200, "offset": offset},
                             headers={"Authorization": f"Bearer {self.reader}"}, timeout=30).json()
            found.update({r["run_id"]: r for r in page["items"]})
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return found

    def report(self, run_id: str) -> dict[str, Any]:
        """The report the collector stored for `run_id`, as the agent sent it."""
        response = httpx.get(f"{self.url}/api/v1/runs/{run_id}", headers={"Authorization": f"Bearer {self.reader}"},
                             timeout=30)
        response.raise_for_status()
        data: dict[str, Any] = response.json()["report"]
        return data


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    db = f"sqlite:///{tmp_path / 'collector.db'}"
    subprocess.run([sys.executable, "-m", "agent.collector.cli", "migrate", "--db", db], check=True,
                   capture_output=True)
    token_file = tmp_path / "token"
    token_file.write_text(token(db, HOST) + "\n")
    token_file.chmod(0o600)
    process = CollectorProcess(db).start()
    try:
        yield Collector(process, token_file, token(db, "--reader", "ops"))
    finally:
        process.stop()


def agent_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", *args]


@dataclass
class Agent:
    """`gitops-agent` for one config, as its own process."""

    config: Path
    state_dir: Path

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(agent_argv(*args, "--config", str(self.config)), capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, cwd=ROOT, timeout=timeout)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(agent_argv(*args, "--config", str(self.config)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)

    def records(self) -> dict[str, dict[str, Any]]:
        """The cycle journal: run_id -> record (state_dir/cycles)."""
        folder = self.state_dir / "cycles"
        return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.is_dir() else {}

    def history(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.state_dir / "history").glob("*.json"))]

    def last_run(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / "last_run.json").read_text())
        return data


@pytest.fixture
def agent(write_config: Callable[..., Path], tmp_path: Path) -> Callable[..., Agent]:
    def make(url: str | Path, **overrides: Any) -> Agent:
        return Agent(write_config(url, **overrides), tmp_path / "state")

    return make


def with_collector(collector: Collector) -> dict[str, Any]:
    return {"collector": {"url": collector.url, "token_file": str(collector.token_file)}}


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the agent process only (not its process group: what it started is on its own)."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def processes_with(text: str) -> list[int]:
    """pids whose command line contains `text`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in entry.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(entry.parent.name))
        except OSError:
            continue
    return found
