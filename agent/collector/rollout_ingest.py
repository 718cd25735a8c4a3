"""At ingest: a report with a rollout block updates its host's row of `rollout_hosts` for (commit,
policy digest) when it is the host's latest report there (docs/rollout.md, What the collector answers).

Called by agent.collector.store.ingest inside its transaction; imports nothing of the collector above
the tables, so the store can import it.
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, and_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from agent.collector.errors import InvalidReportError
from agent.collector.rollout_state import Outcome
from agent.collector.tables import rollout_hosts
from agent.report import GateState, Report, Status

MAX_REASON = 1000


def outcome_of(report: Report) -> Outcome:
    """A host's outcome on the commit it checked: converged when the gate let it apply and it is in sync
    (or corrected); failed when the gate let it apply and the run failed; otherwise pending."""
    if report.rollout is None or report.rollout.gate is not GateState.ALLOWED:
        return Outcome.PENDING
    if report.status in (Status.IN_SYNC, Status.CORRECTED):
        return Outcome.CONVERGED
    if report.status in (Status.FAILED, Status.ERROR):
        return Outcome.FAILED
    return Outcome.PENDING


def record_report(conn: Connection, report: Report) -> None:
    """Keep the host's latest outcome on (commit, policy digest); an older report changes nothing."""
    info, commit = report.rollout, report.source.commit
    if info is None or not commit or info.gate is GateState.UNDECIDED:  # no wave, no policy: nothing to count
        return
    if len(info.wave) > 63 or len(info.policy_digest) > 64 or len(info.plan_digest or "") > 64:
        raise InvalidReportError("rollout: wave or digest longer than its column", "rollout")
    key = and_(rollout_hosts.c.commit == commit, rollout_hosts.c.policy_digest == info.policy_digest,
               rollout_hosts.c.host == report.host)
    values = {"wave": info.wave, "outcome": outcome_of(report).value, "gate": info.gate.value,
              "reason": info.reason[:MAX_REASON], "plan_digest": info.plan_digest, "run_id": report.run_id,
              "wave_sizes": json.dumps({w.name: w.size for w in info.wave_sizes}), "at": report.finished_at}
    stored = conn.execute(select(rollout_hosts.c.at).where(key)).first()
    if stored is None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(dialect.insert(rollout_hosts).on_conflict_do_nothing().values(
            commit=commit, policy_digest=info.policy_digest, host=report.host, **values))
    elif stored.at <= report.finished_at:
        conn.execute(update(rollout_hosts).where(key).values(**values))
