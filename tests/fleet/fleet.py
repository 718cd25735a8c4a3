"""The fleet in a box: what the scenarios drive and look at.

- `ConfigRepo`: the operators' working clone of the config repository (the project's own playbooks/ and
  inventory/ with this fleet's hosts), every commit signed with the site's throwaway GPG key unless a test
  says otherwise, pushed to the bare repository that `git daemon` serves on the bridge.
- `Member`: one host. Netns hosts (tini + sshd) run `gitops-agent run` on demand, the way cron or an operator
  would; the systemd host runs the packaged unit and acts on its own schedule.
- `Fleet`: the members, the Git server, the collector, and the test's ledger of every run it started.

Host state is read over SSH with testinfra (paramiko), never from the agent's own report.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import testinfra

from tests.harness import netns, nspawn
from tests.harness.gitserver import GitDaemon
from tests.live_collector import CollectorProcess

POLL_S = 5  # schedule.poll of every fleet host
OPERATOR = "fleet-tests"  # the tests' reader token, also an operator of rollouts (`serve --operator`)
GIT_ENV = {"GIT_AUTHOR_NAME": "Fleet Ops", "GIT_AUTHOR_EMAIL": "ops@example.org",
           "GIT_COMMITTER_NAME": "Fleet Ops", "GIT_COMMITTER_EMAIL": "ops@example.org",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


@dataclass
class ConfigRepo:
    work: Path
    bare: Path
    gnupghome: Path
    fingerprint: str

    def git(self, *args: str) -> str:
        env = {**os.environ, **GIT_ENV, "GNUPGHOME": str(self.gnupghome)}
        out = subprocess.run(["git", "-C", str(self.work), *args], check=True, capture_output=True, text=True,
                             env=env)
        return out.stdout.strip()

    def commit(self, files: dict[str, str], message: str, *, signed: bool = True) -> str:
        """Write files (relative paths), commit (signed unless told), push to the server; returns the sha."""
        for name, text in files.items():
            target = self.work / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        self.git("add", "-A")
        sign = ["-c", f"user.signingkey={self.fingerprint}", "commit", "-S"] if signed else ["commit"]
        self.git(*sign, "-q", "-m", message)
        self.git("push", "-q", "origin", "HEAD:main")
        return self.git("rev-parse", "HEAD")

    def read(self, name: str) -> str:
        return (self.work / name).read_text(encoding="utf-8")


@dataclass
class AgentRun:
    host: str
    exit_code: int
    report: dict[str, Any]
    stderr: str


@dataclass
class Member:
    name: str
    address: str
    groups: tuple[str, ...]
    ssh_config: Path
    host: netns.Host | None = None          # a netns host (tini as PID 1)
    machine: nspawn.Machine | None = None   # the host booted under systemd

    def run(self, *argv: str, check: bool = True, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        if self.host is not None:
            return self.host.run(*argv, check=check, timeout_s=timeout_s)
        assert self.machine is not None
        return self.machine.run(*argv, check=check, timeout_s=timeout_s)

    def agent(self, *args: str) -> AgentRun:
        """`gitops-agent run --json [args]` inside the host, as root, with the packaged configuration."""
        result = self.run("gitops-agent", "run", "--json", *args, check=False, timeout_s=900)
        try:
            report = json.loads(result.stdout)
        except json.JSONDecodeError as error:
            raise AssertionError(f"{self.name}: no report (exit {result.returncode}): {error}\n"
                                 f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}") from None
        return AgentRun(self.name, result.returncode, report, result.stderr)

    def ssh(self) -> Any:
        """A testinfra host over SSH (paramiko), as an operator would look at it."""
        return testinfra.get_host(f"paramiko://root@{self.address}", ssh_config=str(self.ssh_config))


@dataclass
class Fleet:
    members: dict[str, Member]
    repo: ConfigRepo
    git_server: GitDaemon
    collector: CollectorProcess
    reader_token: str
    ledger: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    layer: Path | None = None  # the overlay layer with the agent installed (for hosts added by a test)
    bridge: netns.Bridge | None = None

    def with_group(self, group: str) -> list[Member]:
        return [m for m in self.members.values() if group in m.groups]

    @property
    def on_demand(self) -> list[Member]:
        """The hosts the tests run the agent on (all but the one whose daemon runs under systemd)."""
        return [m for m in self.members.values() if m.host is not None]

    @property
    def daemon_host(self) -> Member:
        return next(m for m in self.members.values() if m.machine is not None)

    def run_agents(self, members: list[Member], *args: str) -> dict[str, AgentRun]:
        """Run the agent on several hosts at once; every run id goes into the ledger."""
        with ThreadPoolExecutor(max_workers=len(members)) as pool:
            runs = list(pool.map(lambda m: m.agent(*args), members))
        for run in runs:
            self.ledger[run.host].append(run.report["run_id"])
        return {run.host: run for run in runs}

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.collector.url}/api/v1{path}", params=params, timeout=30,
                         headers={"Authorization": f"Bearer {self.reader_token}"})

    def api(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    def runs_of(self, host: str) -> list[dict[str, Any]]:
        """Every run the collector holds for host, newest first (none before its first report)."""
        response = self.get(f"/hosts/{host}/runs", limit=1000)
        if response.status_code == 404:
            return []
        assert response.status_code == 200, f"runs of {host}: {response.status_code} {response.text}"
        return list(response.json()["items"])

    def wait_for(self, what: str, probe: Callable[[], Any], timeout_s: float, every_s: float = 2.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                journal = self.daemon_host.run("journalctl", "--no-pager", "-o", "cat", "-n", "60",
                                               "-u", "gitops-agent.service", check=False).stdout
                raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n"
                                     f"--- {self.daemon_host.name}: gitops-agent.service\n{journal}")
            time.sleep(every_s)

    def daemon_run_on(self, commit: str, timeout_s: float) -> dict[str, Any]:
        """The newest run of the systemd host on commit, once the collector has it."""
        name = self.daemon_host.name

        def probe() -> dict[str, Any] | None:
            runs = [r for r in self.runs_of(name) if r.get("commit") == commit]
            return runs[0] if runs else None

        return dict(self.wait_for(f"{name}'s daemon to report a run on {commit[:10]}", probe, timeout_s))
