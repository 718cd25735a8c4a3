"""A host's current drift items are found without reading its resolved ones.

Resolved items stay as history, and a host whose drift comes and goes gathers more of them with every
report, for as long as they are kept. Every read that asks for a host's current items (ingest's single and
batched paths, the hosts list's and a host page's drift counts, a host's compliance figure,
`drift list --host`, and the exceptions' rechecks) must cost the same with 600 resolved items behind the
host as with none (review_store.IS_CURRENT). Not here: the host page's compliance chart
(compliance_store.host_series), which still reads the host's resolved episodes to find those of its window.
Measured as SQLite's virtual-machine instructions (its progress handler), which count the index entries
a statement reads whatever plan it takes. SQLite only: PostgreSQL plans a
host's read as the same seek, but may plan a batch's (many hosts) as a bitmap of two indexes.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from agent.collector import compliance_store, db, drift_cli, queries, review_store, store
from agent.collector import drift_exceptions as dx
from agent.collector.queries import HostFilter, Page
from agent.collector.tables import review_items
from agent.report import Report, Status, to_json
from tests.factory import BASE_TIME, drift_item, make_report
from tests.live_collector import fresh_database

HOST = "web01.example.com"
HISTORY = 60  # reports, each drifting on tasks of its own: 10 items each, resolved by the next report
CURRENT = tuple(drift_item(f"current task {i}") for i in range(3))
ACTOR = review_store.Actor("ops", "cli")


@dataclass
class Counted:
    """An engine whose SQLite connections count their virtual-machine instructions while `on`."""
    engine: Engine
    steps: int = 0
    on: bool = False

    def count(self) -> int:
        if self.on:
            self.steps += 1
        return 0  # go on

    @contextmanager
    def measuring(self) -> Iterator[None]:
        self.steps, self.on = 0, True
        try:
            yield
        finally:
            self.on = False


def _counted(url: str) -> Counted:
    engine = db.create(url)
    counted = Counted(engine)

    @event.listens_for(engine, "connect")
    def _count(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_progress_handler(counted.count, 1)

    return counted


def _report(n: int, drift: tuple[Any, ...]) -> Report:
    return make_report(HOST, status=Status.DRIFTED, drift=drift, finished_at=BASE_TIME + timedelta(minutes=n))


def _store(engine: Engine, report: Report) -> None:
    raw = to_json(report).encode()
    assert store.ingest(engine, report, raw, received_at=report.finished_at)


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Counted]]:
    """"fresh": the host's current items alone; "old": the same current items after HISTORY reports
    whose items were resolved one report later."""
    made: dict[str, Counted] = {}
    with fresh_database("sqlite", tmp_path_factory.mktemp("fresh"), migrated=True) as fresh_url, \
            fresh_database("sqlite", tmp_path_factory.mktemp("old"), migrated=True) as old_url:
        made["fresh"], made["old"] = _counted(fresh_url), _counted(old_url)
        for n in range(HISTORY):
            _store(made["old"].engine, _report(n, tuple(drift_item(f"task {n}.{i}") for i in range(10))))
        for counted in made.values():
            _store(counted.engine, _report(HISTORY, CURRENT))
        yield made
        for counted in made.values():
            counted.engine.dispose()


def _resolved(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(review_items).where(
            review_items.c.state == "resolved")).scalar_one()


def _drift_list(host: str, state: str) -> Callable[[Engine, int], Any]:
    """`gitops-collector drift list --host HOST --state STATE`'s read."""
    args = argparse.Namespace(state=state, host=host, role=None, task=None, limit=100)
    return lambda engine, n: drift_cli._list(engine, args, io.StringIO())


def _exception(n: int) -> dx.DriftException:
    """Accepts the web role's drift for a day from BASE_TIME + n minutes (a new one per call)."""
    return dx.DriftException(id=0, scope=dx.ExceptionScope.ROLE, owner="ops", reason="vendor", ticket=f"T-{n}",
                             created_at=BASE_TIME, expires_at=BASE_TIME + timedelta(days=1, minutes=n),
                             role="web", role_kind=dx.RoleKind.PLAYBOOK)


READS: dict[str, Callable[[Engine, int], Any]] = {
    "ingest": lambda engine, n: _store(engine, _report(n, CURRENT)),
    "ingest_group": lambda engine, n: store.ingest_group(
        engine, [(r := _report(n, CURRENT), to_json(r).encode(), r.finished_at)]),
    "hosts list": lambda engine, n: queries.list_hosts(engine, HostFilter(), Page(),
                                                       stale_before=BASE_TIME),
    "host page": lambda engine, n: queries.get_host(engine, HOST, stale_before=BASE_TIME),
    "drift items of the host": lambda engine, n: queries.drift_items_now(engine, Page(), host=HOST),
    "compliance figure": lambda engine, n: compliance_store.host_figure(engine, HOST, BASE_TIME),
    "an exception created (its recheck)": lambda engine, n: review_store.create_exception(
        engine, _exception(n), actor=ACTOR, now=BASE_TIME),
    "exceptions expired": lambda engine, n: review_store.expire_exceptions(engine, now=BASE_TIME + timedelta(days=3)),
    "drift list --host": _drift_list(HOST, "current"),
    "drift list --host --state open": _drift_list(HOST, "open"),
}


def test_the_history_behind_the_host_is_as_built(databases: dict[str, Counted]) -> None:
    assert _resolved(databases["fresh"].engine) == 0
    assert _resolved(databases["old"].engine) == HISTORY * 10
    for counted in databases.values():
        drift = queries.drift_items_now(counted.engine, Page(), host=HOST).items
        assert sorted(i["task"] for i in drift) == [f"current task {i}" for i in range(3)]


@pytest.mark.parametrize("name", list(READS))
def test_a_read_of_a_hosts_current_items_does_not_grow_with_its_resolved_ones(
        databases: dict[str, Counted], name: str) -> None:
    steps = {}
    for label, counted in databases.items():
        READS[name](counted.engine, HISTORY + 1 + list(READS).index(name))  # warm: statements compiled
        with counted.measuring():
            READS[name](counted.engine, HISTORY + 100 + list(READS).index(name))
        steps[label] = counted.steps
    assert steps["fresh"] > 0
    # 600 resolved entries read would be thousands of instructions more; a B-tree one level deeper is not
    assert steps["old"] < steps["fresh"] * 1.25 + 200, steps
