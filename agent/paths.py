"""Every path under state_dir, in one place: `StatePaths(state_dir).<name>`.

The layout (what the agent keeps; README.md lists it for operators). Owner: the module that writes it.

  state.json          AgentState: converged commits, drift first seen, ... (agent.state)
  last_run.json       the last report, v1 format, what monitoring reads (agent.state)
  history/            the last N reports, one file each, oldest pruned (agent.state)
  cycles/<run_id>.json  the cycle in progress, then its finished report: written before anything can
                      change the host, removed once the report is published (agent.journal)
  outbox/             reports waiting for the collector (agent.outbox, agent.delivery)
  delivery.json       how the last delivery attempt went, for `status` and `doctor` (agent.delivery)
  pause.json          the pause in force, `gitops-agent pause` (agent.state)
  lock                the cycle lock, held for a whole cycle (agent.lock)
  requests/           `run` asking the running daemon for a cycle: <id>.json, answered by <id>.done
                      (agent.control)
  daemon.pid          the running daemon's pid (agent.control)
  daemon.json         the daemon's status: next full check, the cycle in progress (agent.daemon)
  repo/               the Git cache (agent.source)
  releases/, current  checked-out commits, and the link to the one in use (agent.source)
  gnupg/              the agent's private keyring for source.verify: gpg (agent.source)
  work/               ansible-runner private data dirs while a run is going; cleared at the start of
                      every cycle (agent.runner)
  facts/              the host's cached facts, Ansible's jsonfile cache, one folder per subset
                      (agent.runner)
  inventory-cache/    the inventory graph of recent commits (agent.invcache)
  syntax-checked      the key of the last plan whose playbooks all loaded (agent.cycle)
  watch.json          the paths each role's last check managed, for the daemon's watcher (agent.cycle)
  watch-state.json    what the daemon's watcher watches, what it cannot, contested paths, the changed
                      paths of the watch check in progress (agent.watchservice; read by status and by
                      the cycle for its report)
  watch-contested.json  the watcher's correction counts of watched paths, kept across restarts
                      (agent.watchservice)
  enrolment.json      the pending self-enrolment request and its pickup secret, removed once the token
                      is written (agent.enrolment)
  *.corrupt-<time>    a state file that could not be read, kept for forensics (agent.state)
Every file is written atomically (temp, fsync, rename), with mode 0600 unless it is meant for people
(daemon.pid, daemon.json, delivery.json: 0644).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StatePaths:
    root: Path  # state_dir

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def last_run(self) -> Path:
        return self.root / "last_run.json"

    @property
    def history(self) -> Path:
        return self.root / "history"

    @property
    def cycles(self) -> Path:
        return self.root / "cycles"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def delivery(self) -> Path:
        return self.root / "delivery.json"

    @property
    def enrolment(self) -> Path:
        return self.root / "enrolment.json"  # the pending enrolment request and its pickup secret (0600)

    @property
    def pause(self) -> Path:
        return self.root / "pause.json"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def requests(self) -> Path:
        return self.root / "requests"

    @property
    def daemon_pid(self) -> Path:
        return self.root / "daemon.pid"

    @property
    def daemon_status(self) -> Path:
        return self.root / "daemon.json"

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def gnupg(self) -> Path:
        return self.root / "gnupg"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def facts(self) -> Path:
        return self.root / "facts"

    @property
    def inventory_cache(self) -> Path:
        return self.root / "inventory-cache"

    @property
    def syntax_checked(self) -> Path:
        return self.root / "syntax-checked"

    @property
    def watch_set(self) -> Path:
        return self.root / "watch.json"

    @property
    def watch_state(self) -> Path:
        return self.root / "watch-state.json"

    @property
    def watch_contested(self) -> Path:
        """The daemon's correction counts of watched paths (agent.watchrules.ContestedPaths), so that a
        restart does not forget a fight with another writer."""
        return self.root / "watch-contested.json"
