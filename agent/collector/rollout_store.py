"""The collector's rollout storage and queries over the migration 0006 tables (docs/rollout.md).

- (agent.collector.rollout_ingest keeps each host's latest outcome from its reports, at ingest.)
- `store_policy`: the text of `rollout.yml` an agent sends for a (commit, digest) the collector did not
  know; parsed with agent.rollout.parse_policy and kept only when its digest is the one named.
- `answer`: the state served to agents on ``GET /api/v1/rollouts/{commit}?policy=DIGEST``. Computing it
  records what it finds, once: the first time each wave met its criteria (never moved back) and the
  automatic halt of a wave that can no longer meet them, with an alert queued for every webhook.
- `act` (halt, resume, skip a wave) and `approve` (plan digests): an operator's actions, each a row with
  who, when and why (`rollout_actions`, `rollout_approvals`).
- `view`: everything the commit page shows (waves, halt, the action log, approvals pending and given).

Errors are CollectorErrors with one line naming what is wrong (404 unknown policy, 400/422 bad input).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from agent.collector import db, notify_store, store
from agent.collector.alerts import Grouping, Webhook, make_alert
from agent.collector.errors import BadRequestError, NotFoundError
from agent.collector.rollout_state import HostOutcome, Outcome, RolloutState, WaveState, rollout_state
from agent.collector.tables import (
    rollout_actions,
    rollout_approvals,
    rollout_hosts,
    rollout_policies,
    rollout_waves,
)
from agent.errors import RolloutError
from agent.report import format_time
from agent.rollout import Policy, parse_policy, policy_from_data

ACTIONS = ("halt", "resume", "skip")
AUTOMATIC = "collector"  # the actor of an automatic halt
MAX_REASON = 1000
MAX_POLICY_BYTES = 64 * 1024
UNKNOWN_POLICY = "unknown policy"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Notify:
    """Where an automatic halt's alert goes (the collector's webhooks and grouping)."""

    webhooks: tuple[Webhook, ...] = ()
    grouping: Grouping | None = None
    base_url: str | None = None


def check_digest(value: str, field: str) -> str:
    """A sha256 as 64 lower-case hex digits, else a one-line 400 naming ``field``."""
    if len(value) != 64 or not set(value) <= _HEX:
        raise BadRequestError(f"{field}: must be a sha256 (64 lower-case hex digits), got {value[:80]!r}")
    return value


def check_commit(value: str) -> str:
    if not 4 <= len(value) <= 64 or not set(value) <= _HEX:
        raise BadRequestError(f"commit: must be a Git object id (hex), got {value[:80]!r}")
    return value


def store_policy(engine: Engine, commit: str, digest: str, text: str, *, now: datetime) -> bool:
    """Keep the policy (the text of rollout.yml) of ``commit`` when it parses and its digest is
    ``digest``. True: stored now; False: already known. BadRequestError names what is wrong."""
    check_commit(commit)
    check_digest(digest, "policy")
    try:
        policy = parse_policy(text)
    except RolloutError as e:
        raise BadRequestError(str(e)) from e
    if policy.digest() != digest:
        raise BadRequestError(
            f"policy: this rollout.yml has digest {policy.digest()[:12]}…, not {digest[:12]}… as asked"
        )
    with db.write(engine) as conn:
        if _policy(conn, commit, digest) is not None:
            return False
        store._insert_ignore(
            conn,
            rollout_policies,
            {
                "commit": commit,
                "policy_digest": digest,
                "first_seen_at": now,
                "policy_json": json.dumps(_policy_data(policy), sort_keys=True),
            },
        )
    return True


def _policy_data(policy: Policy) -> dict[str, Any]:
    """The policy back in the file's own shape (so policy_from_data reads it again, same digest)."""

    def share(s: Any) -> str | int:
        return f"{s.percent:g}%" if s.percent is not None else int(s.count)

    def dur(seconds: int) -> str:
        return f"{seconds}s"

    waves = []
    for i, w in enumerate(policy.waves):
        item: dict[str, Any] = {"name": w.name}
        if w.groups:
            item["groups"] = list(w.groups)
        if w.share is not None:
            item["share"] = share(w.share)
        if i:
            item["soak"] = dur(w.soak_s)
            item["criteria"] = {
                "converged": share(w.criteria.converged),
                "max_failed": share(w.criteria.max_failed),
            }
        waves.append(item)
    return {
        "version": 1,
        "waves": waves,
        "splay": dur(policy.splay_s),
        "on_collector_unreachable": policy.on_collector_unreachable,
        "approve": {"roles": list(policy.approve_roles)},
        "windows": [
            {
                "name": w.name,
                "days": list(w.days),
                "start": w.start.strftime("%H:%M"),
                "duration": dur(w.duration_s),
                "timezone": w.timezone,
                "roles": list(w.roles),
                "groups": list(w.groups),
                "corrective": "anytime" if w.corrective_anytime else "window",
            }
            for w in policy.windows
        ],
        "freezes": [
            {"name": f.name, "start": f.start_at.isoformat(), "end": f.end_at.isoformat()}
            for f in policy.freezes
        ],
    }


def _policy(conn: Connection, commit: str, digest: str) -> tuple[Policy, datetime] | None:
    row = conn.execute(
        select(rollout_policies.c.policy_json, rollout_policies.c.first_seen_at).where(
            rollout_policies.c.commit == commit, rollout_policies.c.policy_digest == digest
        )
    ).first()
    if row is None:
        return None
    return policy_from_data(json.loads(row.policy_json)), row.first_seen_at


def _halt(conn: Connection, commit: str) -> dict[str, Any] | None:
    """The halt in force: the latest halt of the commit, unless a resume came after it."""
    row = conn.execute(
        select(rollout_actions)
        .where(rollout_actions.c.commit == commit, rollout_actions.c.action.in_(("halt", "resume")))
        .order_by(rollout_actions.c.id.desc())
        .limit(1)
    ).first()
    if row is None or row.action != "halt":
        return None
    return {"by": row.actor, "at": format_time(row.at), "reason": row.reason, "wave": row.wave}


def _rows(conn: Connection, commit: str, digest: str) -> list[Any]:
    """The hosts that converged or failed (pending ones count for nothing): host, wave, outcome, at."""
    h = rollout_hosts.c
    return list(conn.execute(select(h.host, h.wave, h.outcome, h.at).where(
        h.commit == commit, h.policy_digest == digest, h.outcome != Outcome.PENDING.value)))


def _sizes(conn: Connection, commit: str, digest: str) -> dict[str, int] | None:
    """The wave sizes of the latest report (every host computed the same from the same commit); None
    before any host reported on the commit."""
    h = rollout_hosts.c
    text = conn.execute(select(h.wave_sizes).where(h.commit == commit, h.policy_digest == digest)
                        .order_by(h.at.desc()).limit(1)).scalar()
    if text is None:
        return None
    sizes: dict[str, int] = json.loads(text)
    return sizes


def _met(conn: Connection, commit: str, digest: str) -> dict[str, datetime]:
    return {
        r.wave: r.criteria_met_at
        for r in conn.execute(
            select(rollout_waves).where(
                rollout_waves.c.commit == commit, rollout_waves.c.policy_digest == digest
            )
        )
    }


def _skipped(conn: Connection, commit: str) -> set[str]:
    return {
        w
        for (w,) in conn.execute(
            select(rollout_actions.c.wave).where(
                rollout_actions.c.commit == commit, rollout_actions.c.action == "skip"
            )
        )
    }


@dataclass(frozen=True)
class _Evaluation:
    policy: Policy
    first_seen_at: datetime
    rows: list[Any]
    recorded: dict[str, datetime]
    state: RolloutState
    halted: dict[str, Any] | None

    def new_met(self) -> list[tuple[str, datetime]]:
        return [
            (w.name, w.criteria_met_at)
            for w in self.state.waves
            if w.criteria_met_at is not None and w.name not in self.recorded
        ]

    def halt_wave(self, conn: Connection, commit: str) -> str | None:
        """The wave to halt automatically now, if any (not while halted, and once per wave)."""
        if self.state.halt_reason is None or self.halted is not None:
            return None
        wave = self.state.halt_reason.split(":", 1)[0].removeprefix("wave ")
        return None if _auto_halted(conn, commit, wave) else wave


def _evaluate(conn: Connection, commit: str, digest: str) -> _Evaluation:
    known = _policy(conn, commit, digest)
    if known is None:
        raise NotFoundError(UNKNOWN_POLICY)
    policy, first_seen_at = known
    rows = _rows(conn, commit, digest)
    recorded = _met(conn, commit, digest)
    sizes = _sizes(conn, commit, digest)
    if sizes is None:  # no host reported on the commit yet: the wave sizes are unknown, nothing is met
        state = RolloutState(
            tuple(WaveState(w.name, 0, 0, 0, recorded.get(w.name)) for w in policy.waves), None
        )
    else:
        state = rollout_state(
            policy,
            first_seen_at=first_seen_at,
            sizes=sizes,
            recorded_met_at=recorded,
            outcomes=[HostOutcome(r.host, r.wave, Outcome(r.outcome), r.at) for r in rows],
        )
    return _Evaluation(policy, first_seen_at, rows, recorded, state, _halt(conn, commit))


def answer(
    engine: Engine, commit: str, digest: str, *, now: datetime, notify: Notify = Notify()
) -> dict[str, Any]:
    """The rollout state of (commit, policy digest) for agents (docs/rollout.md, What the collector
    answers), recording new criteria times and an automatic halt (with its alert). NotFoundError
    ``unknown policy`` when the collector has no policy for the pair: the agent then sends it.

    Read-only unless there is something new to record; then again inside a write transaction, so two
    collector processes record each time and each halt once."""
    check_commit(commit)
    check_digest(digest, "policy")
    with engine.connect() as conn:
        found = _evaluate(conn, commit, digest)
        pending = bool(found.new_met()) or found.halt_wave(conn, commit) is not None
    if pending:
        with db.write(engine) as conn:
            found = _evaluate(conn, commit, digest)
            for wave_name, met_at in found.new_met():
                store._insert_ignore(
                    conn,
                    rollout_waves,
                    {"commit": commit, "policy_digest": digest, "wave": wave_name, "criteria_met_at": met_at},
                )
            halt_wave = found.halt_wave(conn, commit)
            if halt_wave is not None and found.state.halt_reason is not None:
                _record_halt(
                    conn, commit, halt_wave, found.state.halt_reason, found.rows, now=now, notify=notify
                )
                found = replace(found, halted=_halt(conn, commit))
    with engine.connect() as conn:
        skipped = _skipped(conn, commit)
        approved = sorted(
            p
            for (p,) in conn.execute(
                select(rollout_approvals.c.plan_digest).where(rollout_approvals.c.commit == commit)
            )
        )
    return {
        "commit": commit,
        "policy_digest": digest,
        "first_seen_at": format_time(found.first_seen_at),
        "halted": found.halted,
        "waves": [
            {
                "name": w.name,
                "size": w.size,
                "converged": w.converged,
                "failed": w.failed,
                "criteria_met_at": format_time(w.criteria_met_at) if w.criteria_met_at else None,
                "skipped": w.name in skipped,
            }
            for w in found.state.waves
        ],
        "approved_plans": approved,
    }


def _auto_halted(conn: Connection, commit: str, wave: str) -> bool:
    """Whether the collector already halted this wave once (after a resume it does not halt it again:
    the operator decided)."""
    return (
        conn.execute(
            select(func.count())
            .select_from(rollout_actions)
            .where(
                rollout_actions.c.commit == commit,
                rollout_actions.c.action == "halt",
                rollout_actions.c.actor == AUTOMATIC,
                rollout_actions.c.wave == wave,
            )
        ).scalar_one()
        > 0
    )


def _record_halt(
    conn: Connection, commit: str, wave: str, reason: str, rows: list[Any], *, now: datetime, notify: Notify
) -> None:
    conn.execute(
        rollout_actions.insert().values(
            commit=commit, action="halt", wave=wave, actor=AUTOMATIC, at=now, reason=reason
        )
    )
    failed = [(r.host, r.at) for r in rows if r.wave == wave and r.outcome == Outcome.FAILED.value]
    alert = make_alert("halted", None, commit, failed or [(AUTOMATIC, now)])
    for hook in notify.webhooks:
        notify_store._queue(
            conn,
            hook,
            alert,
            now=now,
            grouping=notify.grouping or Grouping(0.0, 0.0),
            base_url=notify.base_url,
        )


def _reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise BadRequestError("reason: say why (it is logged with who and when)")
    if len(reason) > MAX_REASON:
        raise BadRequestError(f"reason: at most {MAX_REASON} characters")
    if "\x00" in reason:  # SQLite would store it, PostgreSQL refuses it: refused on both, named
        raise BadRequestError("reason: must not contain a NUL character")
    return reason


def act(
    engine: Engine,
    commit: str,
    action: str,
    *,
    actor: str,
    reason: str,
    now: datetime,
    wave: str | None = None,
) -> dict[str, Any]:
    """An operator's halt, resume or skip (of ``wave``), logged with who, when and why. Returns the row.
    BadRequestError: unknown action, no reason, no such wave; ConflictError-like 400 for a resume with
    no halt in force or a halt over a halt."""
    check_commit(commit)
    if action not in ACTIONS:
        raise BadRequestError(f"action: must be one of {', '.join(ACTIONS)}, got {action[:40]!r}")
    reason = _reason(reason)
    with db.write(engine) as conn:
        policies = [
            _policy(conn, commit, d)
            for (d,) in conn.execute(
                select(rollout_policies.c.policy_digest).where(rollout_policies.c.commit == commit)
            )
        ]
        if not policies:
            raise NotFoundError(
                f"commit {commit[:12]}: no rollout known (no host reported a rollout.yml for it)"
            )
        halted = _halt(conn, commit)
        if action == "halt" and halted is not None:
            raise BadRequestError(f"commit {commit[:12]} is already halted (by {halted['by']})")
        if action == "resume" and halted is None:
            raise BadRequestError(f"commit {commit[:12]} is not halted")
        if action == "skip":
            names = {w.name for p in policies if p for w in p[0].waves}
            if wave not in names:
                raise BadRequestError(
                    f"wave: {str(wave)[:63]!r} is not a wave of this commit's policy "
                    f"(waves: {', '.join(sorted(names))})"
                )
            for (digest,) in conn.execute(
                select(rollout_policies.c.policy_digest).where(rollout_policies.c.commit == commit)
            ):
                store._insert_ignore(
                    conn,
                    rollout_waves,
                    {"commit": commit, "policy_digest": digest, "wave": wave, "criteria_met_at": now},
                )
        elif action == "halt":
            wave = None
        elif action == "resume":
            wave = halted["wave"] if halted else None
        conn.execute(
            rollout_actions.insert().values(
                commit=commit, action=action, wave=wave, actor=actor, at=now, reason=reason
            )
        )
    return {
        "commit": commit,
        "action": action,
        "wave": wave,
        "actor": actor,
        "at": format_time(now),
        "reason": reason,
    }


def approve(
    engine: Engine, commit: str, plan_digests: list[str], *, actor: str, reason: str, now: datetime
) -> list[str]:
    """Approve each plan digest for ``commit`` (one action for every host with that plan). Returns the
    digests newly approved (one already approved keeps its first approver)."""
    check_commit(commit)
    if not plan_digests:
        raise BadRequestError("plan_digests: give at least one plan digest to approve")
    digests = [check_digest(d, f"plan_digests[{i}]") for i, d in enumerate(plan_digests)]
    reason = _reason(reason)
    added = []
    with db.write(engine) as conn:
        for digest in dict.fromkeys(digests):
            known = conn.execute(
                select(func.count())
                .select_from(rollout_hosts)
                .where(rollout_hosts.c.commit == commit, rollout_hosts.c.plan_digest == digest)
            ).scalar_one()
            if not known:
                raise NotFoundError(  # 404: the request is well formed, the plan is not there (yet)
                    f"plan {digest[:12]}…: no host reported this plan for commit {commit[:12]}"
                )
            exists = conn.execute(
                select(func.count())
                .select_from(rollout_approvals)
                .where(rollout_approvals.c.commit == commit, rollout_approvals.c.plan_digest == digest)
            ).scalar_one()
            if not exists:
                conn.execute(
                    rollout_approvals.insert().values(
                        commit=commit, plan_digest=digest, actor=actor, at=now, reason=reason
                    )
                )
                added.append(digest)
    return added


def view(engine: Engine, commit: str, *, now: datetime, notify: Notify = Notify()) -> dict[str, Any] | None:
    """The commit page's rollout control: per policy digest (newest first) the agents' answer plus the
    hosts per wave and outcome; the action log; plans pending approval (digest, hosts, a run to show the
    diff) and approvals given; the policy's windows and freezes. None when no rollout is known."""
    with engine.connect() as conn:
        digests = [
            d
            for (d,) in conn.execute(
                select(rollout_policies.c.policy_digest)
                .where(rollout_policies.c.commit == commit)
                .order_by(rollout_policies.c.first_seen_at.desc())
            )
        ]
        if not digests:
            return None
        log = [
            {
                "action": r.action,
                "wave": r.wave,
                "actor": r.actor,
                "at": format_time(r.at),
                "reason": r.reason,
            }
            for r in conn.execute(
                select(rollout_actions)
                .where(rollout_actions.c.commit == commit)
                .order_by(rollout_actions.c.id.desc())
            )
        ]
        approvals = {
            r.plan_digest: {"actor": r.actor, "at": format_time(r.at), "reason": r.reason}
            for r in conn.execute(select(rollout_approvals).where(rollout_approvals.c.commit == commit))
        }
        plans: dict[str, dict[str, Any]] = {}
        for r in conn.execute(
            select(rollout_hosts.c.plan_digest, rollout_hosts.c.host, rollout_hosts.c.run_id)
            .where(rollout_hosts.c.commit == commit, rollout_hosts.c.plan_digest.is_not(None))
            .order_by(rollout_hosts.c.host)
        ):
            entry = plans.setdefault(
                r.plan_digest,
                {
                    "plan_digest": r.plan_digest,
                    "hosts": [],
                    "run_id": r.run_id,
                    "approved": approvals.get(r.plan_digest),
                },
            )
            entry["hosts"].append(r.host)
        policy = _policy(conn, commit, digests[0])
    assert policy is not None
    current = answer(engine, commit, digests[0], now=now, notify=notify)
    return {
        "policy_digest": digests[0],
        "other_policies": digests[1:],
        "answer": current,
        "criteria": _criteria_text(policy[0]),
        "approve_roles": list(policy[0].approve_roles),
        "log": log,
        "pending_plans": [p for p in plans.values() if p["approved"] is None],
        "approved_plans": [p for p in plans.values() if p["approved"] is not None],
        "windows": [
            {
                "name": w.name,
                "days": ",".join(w.days),
                "start": w.start.strftime("%H:%M"),
                "duration_s": w.duration_s,
                "timezone": w.timezone,
                "applies_to": ", ".join([*w.roles, *w.groups]),
                "corrective": "anytime" if w.corrective_anytime else "window",
            }
            for w in policy[0].windows
        ],
        "freezes": [
            {
                "name": f.name,
                "start": format_time(f.start_at),
                "end": format_time(f.end_at),
                "in_force": f.start_at <= now < f.end_at,
            }
            for f in policy[0].freezes
        ],
    }


def _criteria_text(policy: Policy) -> Mapping[str, str]:
    """Per wave, the criteria it must meet before the next wave opens, in words."""

    def share(s: Any) -> str:
        return f"{s.percent:g}%" if s.percent is not None else str(s.count)

    texts = {}
    for k, wave in enumerate(policy.waves):
        if k + 1 == len(policy.waves):
            texts[wave.name] = "last wave: all converged, none failed"
            continue
        following = policy.waves[k + 1]
        crit = following.criteria
        texts[wave.name] = (
            f"{share(crit.converged)} converged, at most {share(crit.max_failed)} failed, "
            f"then {following.soak_s}s soak before {following.name}"
        )
    return texts
