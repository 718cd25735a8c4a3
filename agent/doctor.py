"""`gitops-agent doctor`: test everything a cycle depends on, on demand, and say what is wrong.

Local checks (state_dir, the token file, trusted keys, the host in the inventory of the checked-out
commit, every role's playbook loading) are what `run` refuses on; network checks (the Git source, the
collector, the token's validity) are what a cycle only warns about, because reports wait in the
outbox. Each check gives one line. Nothing here applies or reports anything.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

from agent import preflight, runner
from agent.config import AgentConfig
from agent.cycle import Cycle
from agent.errors import AgentError
from agent.inventory import make_plan, parse_graph


class Result(enum.StrEnum):
    OK = "ok"
    FAIL = "FAIL"
    SKIP = "skip"  # not applicable, or cannot be told yet


@dataclass(frozen=True)
class Check:
    name: str
    result: Result
    detail: str
    local: bool  # True: found without the network (run refuses on it: exit 78)


def _try(name: str, local: bool, check: Callable[[], str]) -> Check:
    try:
        return Check(name, Result.OK, check(), local)
    except AgentError as e:
        return Check(name, Result.FAIL, str(e), local)


def _state_dir(config: AgentConfig) -> str:
    preflight.check_state_dir(config.state_dir, write=True)
    return f"{config.state_dir} is a writable directory"


def _token_file(config: AgentConfig) -> str:
    preflight.check_token_file(config)
    token_file = config.collector.token_file
    if config.collector.enrol and token_file is not None and not token_file.exists():
        return f"{token_file} is not there yet: collector.enrol asks for it (gitops-agent enrol)"
    return f"{token_file} is private and holds one token"


def _trusted_keys(config: AgentConfig) -> Check:
    if config.source.verify == "none":
        return Check("source.trusted_keys", Result.SKIP, "source.verify is none: commits are not verified",
                     True)
    keys = config.source.trusted_keys
    if keys is None or not keys.exists():
        return Check("source.trusted_keys", Result.FAIL,
                     f"source.verify is {config.source.verify} but {keys} does not exist", True)
    return Check("source.trusted_keys", Result.OK, f"{keys}", True)


def _inventory(config: AgentConfig, cycle: Cycle) -> list[Check]:
    """The host's roles in the checked-out commit, and whether each role's playbook loads."""
    current = cycle.source.current
    if not current.is_dir():
        return [Check("inventory", Result.SKIP, "no commit checked out yet (gitops-agent run --check)", True)]
    try:
        inventory = current / config.inventory
        playbooks_dir = current / config.playbooks
        graph = parse_graph(runner.inventory_graph(inventory, current, cycle.settings))
        names = [p.stem for p in playbooks_dir.glob("*.yml")] if playbooks_dir.is_dir() else []
        plan = make_plan(graph=graph, host=config.host, commit=current.resolve().name, project_dir=current,
                         playbooks_dir=playbooks_dir, inventory=inventory, playbook_names=names)
        broken = runner.syntax_errors(plan, replace(cycle.settings, timeout_s=120.0))
    except AgentError as e:
        return [Check("inventory", Result.FAIL, str(e), True)]
    commit = current.resolve().name[:12]
    checks = [Check("inventory", Result.OK, f"host {config.host} has roles {', '.join(plan.roles)} "
                                            f"(commit {commit})", True)]
    checks += [Check(f"role {role}", Result.FAIL, error, True) for role, error in broken.items()]
    return checks


def _source(cycle: Cycle) -> Check:
    commit = cycle.source.probe()
    urls = ", ".join((cycle.config.source.url, *cycle.config.source.mirrors))
    if commit is None:
        return Check("source", Result.FAIL,
                     f"no source answered for ref {cycle.config.source.ref!r} ({urls}); -vv shows why", False)
    return Check("source", Result.OK, f"ref {cycle.config.source.ref!r} is at {commit[:12]}", False)


def _collector(config: AgentConfig) -> list[Check]:
    if not config.collector.url:
        return [Check("collector", Result.SKIP, "collector.url is not set: reports stay on this host", False)]
    from agent.sender import Sender  # httpx: only when there is a collector to ask

    try:
        sender = Sender.from_config(config.collector, timeout_s=10.0)
    except AgentError as e:
        return [Check("collector", Result.FAIL, str(e), True)]
    with sender:
        up, why = sender.health()
        if not up:
            return [Check("collector", Result.FAIL, f"{config.collector.url}: {why}", False)]
        accepted, why = sender.token_accepted()
    return [Check("collector", Result.OK, f"{config.collector.url} is reachable", False),
            Check("collector token", Result.OK if accepted else Result.FAIL,
                  "the collector accepts this host's token" if accepted else f"refused: {why}", False)]


def run_checks(config: AgentConfig) -> list[Check]:
    """Every check, in the order a cycle meets them."""
    checks = [_try("state_dir", True, lambda: _state_dir(config))]
    if checks[0].result is not Result.OK:
        return checks  # nothing else can be trusted without a usable state_dir
    if config.collector.url:
        checks.append(_try("collector.token_file", True, lambda: _token_file(config)))
    checks.append(_trusted_keys(config))
    cycle = Cycle(config)
    checks += _inventory(config, cycle)
    checks.append(_source(cycle))
    checks += _collector(config)
    return checks


def exit_code(checks: list[Check]) -> int:
    """78 (EX_CONFIG) when a local check failed, 1 when only network checks failed, else 0."""
    failed = [c for c in checks if c.result is Result.FAIL]
    if any(c.local for c in failed):
        return 78
    return 1 if failed else 0
