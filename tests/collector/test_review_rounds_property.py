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
from typing import Any
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

# minutes, coarse so that equal times (ties) happen often
minutes = st.integers(min_value=-6, max_value=6).map(lambda m: timedelta(minutes=10 * m))

drift = st.builds(lambda task, kind, role, diffs: drift_item(task, kind=kind, role=role, diffs=diffs),
                  st.sampled_from(TASKS), st.sampled_from(list(DriftKind)), st.sampled_from(ROLES),
                  st.integers(min_value=0, max_value=2))


@st.composite
def a_report(draw: Any, host: str, base: datetime) -> tuple[Report, datetime]:
    report = make_report(host, status=draw(st.sampled_from(STATUSES)), finished_at=base + draw(minutes),
                         commit=draw(st.sampled_from(COMMITS)),
                         drift=tuple(draw(st.lists(drift, max_size=3))), roles=draw(st.sampled_from(ROLE_SETS)))
    return report, base + draw(minutes)  # received before it finished too: clamped


@st.composite
def a_batch(draw: Any, base: datetime) -> list[tuple[Report, datetime]]:
    """2-4 hosts, 1-5 reports each, interleaved at random."""
    hosts = draw(st.lists(st.sampled_from(HOSTS), min_size=2, max_size=4, unique=True))
    order = [h for h in hosts for _ in range(draw(st.integers(min_value=1, max_value=5)))]
    order = draw(st.permutations(order))
    return [draw(a_report(h, base)) for h in order]


@st.composite
def an_exception(draw: Any) -> tuple[dx.DriftException, datetime]:
    """A task or playbook-role exception (all hosts, a pattern or a group), created and expiring around the
    batches' times; returned with its creation time."""
    scope = draw(st.sampled_from([dx.ExceptionScope.TASK, dx.ExceptionScope.ROLE]))
    hosts = draw(st.sampled_from([dx.HostSelector(), dx.HostSelector(pattern="web*"),
                                  dx.HostSelector(group="web"), dx.HostSelector(group="db")]))
    created = BASE_TIME + draw(minutes) + timedelta(minutes=draw(st.integers(min_value=0, max_value=20)))
    expires = created + timedelta(minutes=draw(st.integers(min_value=1, max_value=150)))
    role = draw(st.sampled_from(ROLES))
    fields: dict[str, Any] = {}
    if scope is dx.ExceptionScope.TASK:
        fields["task"] = ItemKey.of("x", drift_item(draw(st.sampled_from(TASKS)), role=role)).task
    else:
        fields.update(role=role, role_kind=dx.RoleKind.PLAYBOOK)
    exc = dx.DriftException(id=0, scope=scope, owner="ops", reason="accepted", ticket="OPS-1", created_at=created,
                            expires_at=expires, hosts=hosts, **fields)
    return exc, created


examples = st.tuples(
    st.lists(an_exception(), max_size=2),
    st.lists(st.booleans(), min_size=2, max_size=2),  # revoke each exception (after the first batch)?
    a_batch(BASE_TIME), a_batch(BASE_TIME + timedelta(minutes=30)),
    st.one_of(st.none(), a_batch(BASE_TIME + timedelta(minutes=60))))


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


def describe(batches: list[list[tuple[Report, datetime]]]) -> str:
    lines = []
    for n, batch in enumerate(batches):
        for r, at in batch:
            lines.append(f"batch {n}: {r.host} {r.status.value} started={r.started_at:%H:%M} "
                         f"finished={r.finished_at:%H:%M} received={at:%H:%M} commit={(r.source.commit or '-')[:2]} "
                         f"roles={r.roles} drift={[(d.task, d.kind.value, d.role, len(d.diffs)) for d in r.drift]}")
    return "\n".join(lines)


@settings(max_examples=40, deadline=None, derandomize=True, database=None, report_multiple_bugs=False,
          suppress_health_check=[HealthCheck.too_slow])
@given(example=examples)
def test_a_batch_records_the_drift_review_that_ingest_one_by_one_records(template: Path, example: Any) -> None:
    exceptions, revoke, *batches = example
    batches = [b for b in batches if b is not None]
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
            for exc, created in exceptions:
                got.append(review_store.create_exception(engine, exc, actor=ACTOR, now=created))
        assert ids[0] == ids[1]
        for n, batch in enumerate(batches):
            items = [(r, to_json(r).encode(), at) for r, at in batch]
            # the batch path alone: no fallback to report-by-report storing, no per-report review
            with mock.patch.object(store, "ingest_batch", side_effect=AssertionError("fell back to ingest_batch")), \
                    mock.patch.object(review_store, "record_report",
                                      side_effect=AssertionError("went through record_report")):
                assert store.ingest_group(grouped, items) == [True] * len(items)
            for r, raw, at in items:
                assert store.ingest(single, r, raw, received_at=at) is True
            if n == 0:
                for (_exc, created), exc_id, gone in zip(exceptions, ids[0], revoke, strict=False):
                    if gone:
                        for engine in engines:
                            review_store.revoke_exception(engine, exc_id, actor=ACTOR, reason="done",
                                                          now=created + timedelta(minutes=5))
            assert review(grouped) == review(single), f"after batch {n}:\n{describe(batches[:n + 1])}"
