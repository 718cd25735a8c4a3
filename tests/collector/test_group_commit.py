"""Group commit (`serve --group-commit`): store.ingest_batch and GroupCommit, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from agent.collector import store
from agent.collector.context import CollectorSettings
from agent.collector.errors import ConflictError
from agent.collector.group_commit import GroupCommit
from agent.collector.store import Expectations
from agent.collector.tables import hosts, runs
from agent.report import Status, to_json
from tests.factory import BASE_TIME, make_report


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_batch_answers_each_report_as_ingest_would(engine: Engine) -> None:
    first = make_report("web01.example.com")
    second = make_report("web02.example.com", status=Status.DRIFTED)
    other_host = make_report("web03.example.com", run_id=first.run_id)
    items = [(r, to_json(r).encode(), BASE_TIME) for r in (first, second, first, other_host)]
    results = store.ingest_batch(engine, items)
    assert results[:3] == [True, True, False]  # the same report again in the batch: a duplicate
    assert isinstance(results[3], ConflictError)  # its run_id is taken by another host's report
    assert "already stored for another host" in str(results[3])
    assert count(engine, runs) == 2 and count(engine, hosts) == 2  # the refused one left the others stored
    # a later batch sees the earlier one: the same report is a duplicate, not stored twice
    assert store.ingest_batch(engine, items[:1]) == [False]
    assert count(engine, runs) == 2


def test_concurrent_reports_share_commits_and_each_is_answered(engine: Engine,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = store.ingest_batch

    def recording(engine: Engine, items: Any, **kw: Any) -> Any:
        sizes.append(len(items))
        return real(engine, items, **kw)

    monkeypatch.setattr(store, "ingest_batch", recording)
    reports = [make_report(f"web{i:02d}.example.com") for i in range(30)]

    async def main() -> list[bool]:
        group = GroupCommit(engine, Expectations(), None, max_batch=8)
        return await asyncio.gather(*(group.ingest(r, to_json(r).encode(), received_at=BASE_TIME)
                                      for r in reports))

    assert asyncio.run(main()) == [True] * 30
    assert count(engine, runs) == 30
    assert sum(sizes) == 30 and max(sizes) == 8 and len(sizes) < 30  # grouped, and within max_batch


def test_a_failed_transaction_fails_every_report_of_its_batch(engine: Engine,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(engine: Engine, items: Any, **kw: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(store, "ingest_batch", broken)
    reports = [make_report(f"web{i:02d}.example.com") for i in range(3)]

    async def main() -> list[Any]:
        group = GroupCommit(engine, Expectations(), None)
        return await asyncio.gather(*(group.ingest(r, to_json(r).encode(), received_at=BASE_TIME)
                                      for r in reports), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, OSError) and str(r) == "disk full" for r in results)
    assert count(engine, runs) == 0


@pytest.fixture
def settings() -> CollectorSettings:
    return CollectorSettings(group_commit=True)  # the app below stores through GroupCommit


def test_the_api_answers_through_group_commit(send: Any, engine: Engine, collector: Any) -> None:
    assert collector.group is not None
    report = make_report("web01.example.com")
    created = send(report)
    assert (created.status_code, created.json()) == (201, {"run_id": report.run_id, "result": "created"})
    again = send(report)
    assert (again.status_code, again.json()["result"]) == (200, "duplicate")
    taken = send(make_report("web02.example.com", run_id=report.run_id))
    assert taken.status_code == 409 and "already stored for another host" in taken.json()["error"]
    assert count(engine, runs) == 1
