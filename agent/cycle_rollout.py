"""The cycle's rollout gate (docs/rollout.md): may this host apply the commit it checked?

Used by agent.cycle between the check and the apply. With no ``rollout.yml`` at the top of the commit
there is no gate (None: apply as before). Otherwise the policy is parsed (a bad one is a RolloutError, a
PlanError: the commit is not applied and the report says why), the host's wave comes from the inventory
graph at the commit, the collector is asked only for a *new* commit (one the host has not converged to),
and agent.gate.decide_gate decides. The gate only withholds: it runs after fetch, signature check and
rewind refusal, and nothing the collector says can name content to run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from agent.drift import Finding
from agent.errors import RolloutAnswerError, RolloutError
from agent.gate import GateDecision, RolloutFacts, decide_gate, plan_digest
from agent.inventory import InventoryGraph
from agent.report import RolloutInfo
from agent.rollout import FILE_NAME, Policy, parse_policy
from agent.rollout_answer import facts_from_data, host_view
from agent.source import Revision
from agent.state import AgentState
from agent.wiring import RolloutAsk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateOutcome:
    decision: GateDecision
    info: RolloutInfo  # the report's rollout block
    new_commit: bool = True  # False: the host converged to this commit before (corrective drift only)

    @property
    def key(self) -> str:
        """The gate's answer as one line ("state: reason"): a held commit is checked again when it changes."""
        return f"{self.decision.state.value}: {self.decision.reason}"


def approval_plan(policy: Policy, findings: Iterable[Finding]) -> str | None:
    """The plan digest of the actionable drift in the approval-required roles (None: no such role has
    any): (role, task key, the diffs as JSON) per task, agent.gate.plan_digest."""
    roles = set(policy.approve_roles)
    items = [(f.task.role, f.task.key, json.dumps([[d.path, d.before, d.after] for d in f.task.diffs]))
             for f in findings if f.actionable and f.task.role in roles]
    return plan_digest(items) if items else None


def read_policy(revision: Revision) -> tuple[Policy, str] | None:
    """The commit's policy and its text, or None without rollout.yml. RolloutError names what is wrong."""
    path = revision.path / FILE_NAME
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RolloutError(f"{FILE_NAME}: cannot be read as UTF-8 text: {e}") from e
    return parse_policy(text), text


class RolloutGate:
    """Per cycle: ``graph`` is set by the plan phase (the inventory graph at the commit)."""

    def __init__(self, host: str, *, ask: RolloutAsk | None, clock: Callable[[], datetime]) -> None:
        self.host = host
        self.ask = ask
        self.clock = clock
        self.graph: InventoryGraph | None = None

    def facts(self, commit: str, policy: Policy, text: str) -> tuple[RolloutFacts | None, str]:
        """The collector's facts, or (None, why) when it cannot be asked, reached, or understood."""
        if self.ask is None:
            return None, "no collector configured"
        data, why = self.ask(commit, policy.digest(), text)
        if data is None:
            return None, why
        try:
            return facts_from_data(data), "ok"
        except RolloutAnswerError as e:
            return None, str(e)

    def decide(self, revision: Revision, state: AgentState, findings: Iterable[Finding],
               roles: tuple[str, ...]) -> GateOutcome | None:
        """The gate's decision for ``revision`` and the report's rollout block; None without rollout.yml."""
        found = read_policy(revision)
        if found is None:
            return None
        return self._decide(found, revision, state, approval_plan(found[0], findings), roles)

    def decide_with_plan(self, revision: Revision, state: AgentState, plan: str | None,
                         roles: tuple[str, ...]) -> GateOutcome | None:
        """As ``decide``, before a check, with the plan digest an earlier check of the commit found."""
        found = read_policy(revision)
        if found is None:
            return None
        return self._decide(found, revision, state, plan, roles)

    def _decide(self, found: tuple[Policy, str], revision: Revision, state: AgentState, plan: str | None,
                roles: tuple[str, ...]) -> GateOutcome:
        policy, text = found
        if self.graph is None or self.host not in self.graph.host_groups:
            raise RolloutError(f"{FILE_NAME}: host '{self.host}' is not in the inventory, so it has no wave")
        if plan is None:  # nothing drifts in the approval-required roles: nothing to approve
            roles = tuple(r for r in roles if r not in policy.approve_roles)
        view, sizes = host_view(policy, self.graph.host_groups, host=self.host, roles=roles)
        new_commit = revision.commit not in state.converged
        facts = None
        if new_commit:
            facts, why = self.facts(revision.commit, policy, text)
            if facts is not None:  # before any report the collector knows no sizes; this host computed them
                own = {w.name: w.size for w in sizes}
                waves = tuple(replace(w, size=own.get(w.name, w.size)) for w in facts.waves)
                facts = replace(facts, waves=waves)
            else:
                log.warning("rollout: collector not asked or not usable (%s): %s", why,
                            policy.on_collector_unreachable)
        now = self.clock()
        # Without the collector, the first wave opens at the commit's time (every host agrees on it).
        decision = decide_gate(policy=policy, host=view, new_commit=new_commit, facts=facts,
                               commit_seen_at=revision.committed_at or now,
                               plan=plan, now=now)
        # The host stays on its last converged commit (agent.cycle enforces it while a new one is held).
        last = revision.commit if not new_commit else (state.converged[-1] if state.converged else None)
        enforcing = None if decision.allow else last
        info = RolloutInfo(wave=view.wave, gate=decision.state, reason=decision.reason,
                           policy_digest=policy.digest(), wave_sizes=sizes,
                           plan_digest=plan, enforcing_commit=enforcing, checked_at=None)
        return GateOutcome(decision, info, new_commit)
