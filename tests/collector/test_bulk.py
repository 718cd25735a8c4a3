"""bulk.executemany: batched writes straight to the driver store byte for byte what SQLAlchemy's
`conn.execute` stores, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import psycopg

from agent.collector import bulk, db, store
from agent.collector.tables import UTCDateTime, metadata, review_hosts
from agent.report import DriftKind, Pause, Status, to_json
from tests.factory import BASE_TIME, drift_item, make_report
from tests.live_collector import fresh_database

TIMES = [
    BASE_TIME, BASE_TIME.replace(microsecond=1), BASE_TIME.replace(microsecond=999_999),
    datetime(2026, 3, 29, 1, 30, 5, 123456, tzinfo=ZoneInfo("Europe/Berlin")),  # the hour clocks skip
    datetime(2026, 10, 25, 2, 30, tzinfo=ZoneInfo("Europe/Berlin")),  # the hour clocks repeat
    datetime(2026, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),  # a day earlier in UTC
    datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-12))),  # a year later
    datetime(1, 1, 1, 0, 0, tzinfo=UTC), datetime(999, 7, 4, 3, 2, 1, 5, tzinfo=UTC),  # years under 1000
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 6, 1, 12, 0, 30, tzinfo=timezone(timedelta(seconds=-3601, microseconds=7))),
]


@pytest.mark.parametrize("dialect", [sqlite.dialect(), psycopg.dialect()], ids=["sqlite", "postgresql"])
def test_time_to_db_gives_what_utcdatetime_binds(dialect: Any) -> None:
    """The value the driver gets for a UTCDateTime column: process_bind_param and then the dialect's own
    DATETIME processing (SQLite: text) against bulk.time_to_db, for times in many zones and at the ends of
    the range; None stays None; a naive time is refused with the same error."""
    reference = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert reference is not None
    fast = bulk.time_to_db(dialect.name)
    for value in [*TIMES, None]:
        got, want = fast(value), reference(value)
        assert (type(got), got) == (type(want), want), value
    with pytest.raises(ValueError, match="naive datetime given to the database") as want_error:
        reference(datetime(2026, 1, 1))
    with pytest.raises(ValueError) as got_error:
        fast(datetime(2026, 1, 1))
    assert str(got_error.value) == str(want_error.value)


@pytest.fixture
def reference(engine: Engine, tmp_path: Path) -> Iterator[Engine]:
    """A second database of the same engine as `engine`, for the SQLAlchemy path."""
    (tmp_path / "reference").mkdir()
    with fresh_database(engine.dialect.name, tmp_path / "reference", migrated=True) as url:
        other = db.create(url)
        db.prepare(other)
        yield other
        other.dispose()


def batches() -> list[list[tuple[Any, bytes, datetime]]]:
    """Three batches: new hosts with and without drift, pauses, commits, roles and times in other zones;
    then the same hosts again (drift items updated, resolved, new; last checks moved; roles replaced; a
    host twice in one batch); then reports older than the stored ones."""
    berlin, minus = ZoneInfo("Europe/Berlin"), timezone(timedelta(hours=-7, minutes=-30))
    t0 = datetime(2026, 11, 20, 13, 0, 0, 250_001, tzinfo=berlin)
    first = [
        make_report("web01.example.com", status=Status.DRIFTED, finished_at=t0,
                    drift=(drift_item("täsk ü"), drift_item("t2", kind=DriftKind.RECURRING, diffs=3)),
                    roles=("web", "lb", "web")),
        make_report("db01.example.com", finished_at=BASE_TIME.astimezone(minus), roles=()),
        make_report("app01.example.com", status=Status.FAILED, commit=None,
                    pause=Pause("maintenance ✓", by="ops", since=BASE_TIME, until=TIMES[3])),
        make_report("cache01.example.com", status=Status.CORRECTED, finished_at=TIMES[5] + timedelta(days=330),
                    drift=(drift_item("redis"),), interval_s=None, splay_s=None),
        # one wall-clock time of one zone, an hour apart in UTC (fold): equal as Python compares them
        make_report("fold0.example.com", started_at=TIMES[4], finished_at=TIMES[4] + timedelta(hours=2)),
        make_report("fold1.example.com", started_at=TIMES[4].replace(fold=1),
                    finished_at=TIMES[4] + timedelta(hours=2)),
    ]
    second = [
        make_report("web01.example.com", status=Status.DRIFTED, finished_at=t0 + timedelta(minutes=30),
                    drift=(drift_item("t2", kind=DriftKind.RECURRING, diffs=1), drift_item("t3")),
                    roles=("db",)),
        make_report("db01.example.com", status=Status.DRIFTED, finished_at=BASE_TIME + timedelta(hours=1),
                    drift=(drift_item("pg"),)),
        make_report("db01.example.com", finished_at=BASE_TIME + timedelta(hours=2)),  # twice in a batch
        make_report("cache01.example.com", finished_at=TIMES[5] + timedelta(days=331)),
    ]
    third = [make_report("web01.example.com", finished_at=BASE_TIME - timedelta(days=2), roles=("x",)),
             make_report("new01.example.com", status=Status.DRIFTED, drift=(drift_item("n1"),))]
    received = [BASE_TIME + timedelta(hours=3, microseconds=17), (BASE_TIME + timedelta(hours=4)).astimezone(berlin),
                BASE_TIME + timedelta(hours=5)]
    return [[(r, to_json(r).encode(), at) for r in batch] for batch, at in zip((first, second, third), received,
                                                                                strict=True)]


def stored(engine: Engine) -> dict[str, list[str]]:
    """Every table's rows as the driver reads them (no SQLAlchemy types): SQLite's text, PostgreSQL's
    values, in a stable order."""
    with engine.connect() as conn:
        return {table.name: sorted(repr(tuple(row)) for row in conn.exec_driver_sql(f'SELECT * FROM "{table.name}"'))
                for table in metadata.sorted_tables}


def test_the_driver_path_stores_what_sqlalchemy_stores(engine: Engine, reference: Engine,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The same batches through store.ingest_group, once with bulk's statements sent through SQLAlchemy
    (`conn.execute`, as before) and once straight to the driver: every table holds the same rows."""
    for batch in batches():
        monkeypatch.setattr(bulk, "THROUGH_SQLALCHEMY", True)
        assert store.ingest_group(reference, batch) == [True] * len(batch)
        monkeypatch.setattr(bulk, "THROUGH_SQLALCHEMY", False)
        assert store.ingest_group(engine, batch) == [True] * len(batch)
    got, want = stored(engine), stored(reference)
    assert got == want
    counts = {name: len(rows) for name, rows in got.items()}  # the batches reached every table they write
    assert all(counts[t] > 0 for t in ("runs", "hosts", "host_roles", "drift_items", "commits", "review_items",
                                       review_hosts.name)), counts
    with engine.connect() as conn:  # and the driver path's times read back through SQLAlchemy as before
        assert conn.execute(text("SELECT count(*) FROM review_items WHERE state = 'resolved'")).scalar_one() > 0


def test_a_row_without_a_key_of_the_first_is_refused(engine: Engine) -> None:
    rows = [{"key_host": "a"}, {"host": "b"}]
    with engine.begin() as conn, pytest.raises(KeyError):
        bulk.executemany(conn, store.ROLES_DELETE, rows)
