"""Property: the drift review a batch leaves (`store.ingest_group`, recorded in rounds by
`review_store.record_reports`) is what `store.ingest` of each report, in the batch's order, leaves.

Hosts send several reports per batch, with random statuses, drift, commits, roles and times (older than
the host's earlier reports too, so that stale reports happen), over consecutive batches, with or without
drift exceptions; both databases start from the same fresh schema."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from agent.collector import db, review_store, store
from agent.collector import drift_exceptions as dx
from agent.collector.drift_review import ItemKey
from agent.collector.tables import review_hosts, review_items
from agent.report import DriftKind, Report, Status, to_json
from tests.factory import BASE_TIME, COMMIT_A, COMMIT_B, drift_item, make_report

HOSTS = ("web01.example.com", "db01.example.com", "app01.example.com", "lb01.example.com")
TASKS = ("a", "b", "c")
ROLES = ("web", "db")
STATUSES = (Status.DRIFTED, Status.CORRECTED, Status.IN_SYNC, Status.FAILED)
COMMITS = (COMMIT_A, COMMIT_B, "d" * 40, None)
ROLE_SETS = (("web",), ("db",), ("web", "db"), ())
ACTOR = review_store.Actor("tester", "cli")
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None  # each ingest commits (FULL sync): in memory, faster

TIMES = st.integers(min_value=-6, max_value=6).map(lambda m: 10 * m)  # minutes, coarse: ties happen often


class Drift(NamedTuple):
    task: str
    kind: str
    role: str
    diffs: int


class Sent(NamedTuple):
    """A report as plain values (small falsifying examples); times in minutes after BASE_TIME."""

    host: str
    status: str
    finished: int
    received: int
    commit: str | None
    roles: tuple[str, ...]
    drift: tuple[Drift, ...]

    def build(self) -> tuple[Report, datetime]:
        report = make_report(self.host, status=Status(self.status), finished_at=at(self.finished),
                             commit=self.commit, roles=self.roles,
                             drift=tuple(drift_item(d.task, kind=DriftKind(d.kind), role=d.role, diffs=d.diffs)
                                         for d in self.drift))
        return report, at(self.received)  # received before it finished too: clamped


class Accepted(NamedTuple):
    """A task or playbook-role exception for all hosts, a pattern or a group, created and expiring around
    the batches' times (minutes after BASE_TIME); revoked after the first batch or not."""

    scope: str
    hosts: str
    role: str
    task: str
    created: int
    lasts: int
    revoked: bool

    def build(self) -> dx.DriftException:
        selector = (dx.HostSelector(group=self.hosts[6:]) if self.hosts.startswith("group:")
                    else dx.HostSelector(pattern=None if self.hosts == "all" else self.hosts))
        fields: dict[str, Any] = {"role": self.role, "role_kind": dx.RoleKind.PLAYBOOK}
        if self.scope == "task":
            fields = {"task": ItemKey.of("x", drift_item(self.task, role=self.role)).task}
        return dx.DriftException(id=0, scope=dx.ExceptionScope(self.scope), owner="ops", reason="accepted",
                                 ticket="OPS-1", created_at=at(self.created),
                                 expires_at=at(self.created + self.lasts), hosts=selector, **fields)


def at(minutes: int) -> datetime:
    return BASE_TIME + timedelta(minutes=minutes)


drifts = st.builds(Drift, st.sampled_from(TASKS), st.sampled_from([k.value for k in DriftKind]),
                   st.sampled_from(ROLES), st.integers(min_value=0, max_value=2))


@st.composite
def a_batch(draw: Any, base: int) -> list[Sent]:
    """2-4 hosts, 1-5 reports each, interleaved at random, around `base`."""
    hosts = draw(st.lists(st.sampled_from(HOSTS), min_size=2, max_size=4, unique=True))
    order = draw(st.permutations([h for h in hosts for _ in range(draw(st.integers(min_value=1, max_value=5)))]))
    return [Sent(h, draw(st.sampled_from([s.value for s in STATUSES])), base + draw(TIMES), base + draw(TIMES),
                 draw(st.sampled_from(COMMITS)), draw(st.sampled_from(ROLE_SETS)),
                 tuple(draw(st.lists(drifts, max_size=3)))) for h in order]


accepted = st.builds(Accepted, st.sampled_from(["task", "role"]),
                     st.sampled_from(["all", "web*", "group:web", "group:db"]), st.sampled_from(ROLES),
                     st.sampled_from(TASKS), st.integers(min_value=-60, max_value=80),
                     st.integers(min_value=1, max_value=150), st.booleans())

examples = st.tuples(st.lists(accepted, max_size=2), a_batch(0), a_batch(30),
                     st.one_of(st.none(), a_batch(60)))


@pytest.fixture(scope="module")
def template() -> Iterator[Path]:
    """A migrated empty database, copied for each side of each example (faster than migrating each)."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        path = Path(tmp) / "template.db"
        engine = db.create(f"sqlite:///{path}")
        db.prepare(engine)
        engine.dispose()
        yield path


def review(e: Engine) -> list[list[str]]:  # ids left out; repr, since some columns are NULL
    with e.connect() as conn:
        return [sorted(repr(tuple(r)[1:] if table is review_items else tuple(r))
                       for r in conn.execute(select(table)).all()) for table in (review_items, review_hosts)]


# a failure's shrinking may run Hypothesis' five minutes: past pytest-timeout's 300 s it would be cut off
@pytest.mark.timeout(600)
@settings(max_examples=40, deadline=None, derandomize=True, database=None, report_multiple_bugs=False,
          suppress_health_check=[HealthCheck.too_slow])
@given(example=examples)
def test_a_batch_records_the_drift_review_that_ingest_one_by_one_records(template: Path, example: Any) -> None:
    accepts, *sent = example
    batches = [[s.build() for s in b] for b in sent if b is not None]
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp, ExitStack() as stack:
        engines = []
        for name in ("group.db", "single.db"):
            shutil.copy(template, Path(tmp) / name)
            engine = db.create(f"sqlite:///{tmp}/{name}")
            stack.callback(engine.dispose)
            engines.append(engine)
        grouped, single = engines
        ids: list[list[int]] = [[], []]
        for engine, got in zip(engines, ids, strict=True):
            for a in accepts:
                got.append(review_store.create_exception(engine, a.build(), actor=ACTOR, now=at(a.created)))
        assert ids[0] == ids[1]
        for n, batch in enumerate(batches):
            items = [(r, to_json(r).encode(), received) for r, received in batch]
            # the batch path alone: no fallback to report-by-report storing, no per-report review
            with mock.patch.object(store, "ingest_batch", side_effect=AssertionError("fell back to ingest_batch")), \
                    mock.patch.object(review_store, "record_report",
                                      side_effect=AssertionError("went through record_report")):
                assert store.ingest_group(grouped, items) == [True] * len(items)
            for r, raw, received in items:
                assert store.ingest(single, r, raw, received_at=received) is True
            if n == 0:
                for a, exc_id in zip(accepts, ids[0], strict=True):
                    if a.revoked:
                        for engine in engines:
                            review_store.revoke_exception(engine, exc_id, actor=ACTOR, reason="done",
                                                          now=at(a.created + 5))
            assert review(grouped) == review(single), f"after batch {n}"
