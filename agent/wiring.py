"""The one place where a cycle's collaborators are built from a configuration.

A `Cycle` (agent.cycle) talks to four parts, each given to it rather than made by it:

- `source`: the Git source of source.url/ref/mirrors (agent.source.GitSource): `sync`, `probe`,
  `clear_leftovers`, `mark`;
- `store`: the state directory (agent.state.StateStore);
- `runner`: what runs Ansible (`PlaybookRunner`; agent.runner for real, a recorded one in
  tests/test_cycle_cases.py);
- `spool`: where a finished report goes for the collector (agent.delivery.enqueue: the outbox).

`cycle_parts(config)` builds the real ones; the CLI (`run`, `doctor`) and the daemon (its probe, through
`git_source`) build them here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from agent import delivery, sender
from agent import runner as ansible_runner
from agent.config import AgentConfig, CollectorConfig
from agent.errors import AgentError
from agent.inventory import RunPlan
from agent.progress import Progress
from agent.report import Report
from agent.runner import RunMode, RunnerSettings, RunResult
from agent.source import GitSource
from agent.state import StateStore


class PlaybookRunner(Protocol):
    """What a cycle asks of Ansible. The module agent.runner is the real one (ansible-runner)."""

    def inventory_graph(self, inventory: Path, project_dir: Path, settings: RunnerSettings) -> str:
        """`ansible-inventory --graph --vars` output for the inventory (AgentError when it fails)."""
        ...

    def syntax_errors(self, plan: RunPlan, settings: RunnerSettings) -> dict[str, str]:
        """role -> why Ansible cannot load its playbook (empty when every playbook loads)."""
        ...

    def run_playbooks(self, plan: RunPlan, mode: RunMode, settings: RunnerSettings, *,
                      cancel: Callable[[], bool], playbooks: tuple[Path, ...] | None = None,
                      progress: Progress | None = None) -> RunResult:
        """One ansible-playbook run of the plan's playbooks (or `playbooks`) in `mode`."""
        ...


RolloutAsk = Callable[[str, str, str], tuple[object | None, str]]


@dataclass(frozen=True)
class CycleParts:
    source: GitSource
    store: StateStore
    runner: PlaybookRunner
    spool: Callable[[Report], None]
    # (commit, policy digest, text of rollout.yml) -> (the collector's rollout answer or None, why not);
    # None: no collector configured (the gate then holds as when it is unreachable; docs/rollout.md)
    ask_rollout: RolloutAsk | None = None


def git_source(config: AgentConfig) -> GitSource:
    """The Git source of a configuration (the cycle's, and the daemon's probe)."""
    return GitSource(config.source, config.state_dir)


def state_store(config: AgentConfig) -> StateStore:
    return StateStore(config.state_dir, history=config.history)


def cycle_parts(config: AgentConfig) -> CycleParts:
    """The real collaborators of a cycle for `config`."""
    return CycleParts(source=git_source(config), store=state_store(config), runner=ansible_runner,
                      spool=partial(delivery.enqueue, config),
                      ask_rollout=partial(collector_rollout, config.collector) if config.collector.url
                      else None)


def collector_rollout(collector: CollectorConfig, commit: str, policy_digest: str,
                      policy_text: str) -> tuple[object | None, str]:
    """Ask the configured collector (one attempt, 15 s at most) for a commit's rollout state."""
    try:
        with sender.Sender.from_config(collector, max_attempts=1) as client:
            return client.rollout(commit, policy_digest, policy_text)
    except (AgentError, OSError) as e:
        return None, str(e)
