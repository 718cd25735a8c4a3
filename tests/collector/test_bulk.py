"""bulk.executemany: batched writes straight to the driver store byte for byte what SQLAlchemy's
`conn.execute` stores, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    false,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.sql.dml import Update

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
    with engine.begin() as conn, pytest.raises(ValueError, match=r"row 1 .*extra \['host'\], missing \['key_host'\]"):
        bulk.executemany(conn, store.ROLES_DELETE, rows)


# -- attacks on the claim (rev3): each test states what `conn.execute` does and what bulk must do --------

scratch_metadata = MetaData()
scratch = Table(
    "bulk_scratch", scratch_metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("text", Text, nullable=True),
    Column("other", Text, nullable=True, server_default="default"),
    Column("flag", Boolean, nullable=True),
    Column("at", UTCDateTime, nullable=True),
)


@pytest.fixture
def scratch_engine(engine: Engine) -> Iterator[Engine]:
    """`engine` with a table of its own (bulk_scratch) for statements the collector does not make."""
    scratch_metadata.create_all(engine)
    yield engine
    scratch_metadata.drop_all(engine)


def scratch_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM bulk_scratch ORDER BY id")]


@pytest.mark.parametrize("rows, named", [
    ([{"id": 1, "text": "a"}, {"id": 2, "text": "b", "other": "dropped?"}], "row 1 .*'other'"),  # extra key
    ([{"id": 1, "text": "a"}, {"id": 2, "other": "b"}], "row 1 .*'other'.*'text'"),  # one for another
    ([{"id": 1, "text": "a"}, {"id": 2}], "row 1 .*'text'"),  # missing
    ([{"id": 1, "text": "a", "txet": "typo"}], "'txet'"),  # a key that is no parameter of the statement
], ids=["extra", "swapped", "missing", "unknown"])
def test_a_row_whose_keys_differ_is_refused_and_nothing_is_written(scratch_engine: Engine, rows: Any,
                                                                   named: str) -> None:
    """`conn.execute` compiles for the first row's keys and ignores any other key (a value silently lost);
    bulk refuses a row whose keys are not the first row's, or a key that is no parameter of the statement,
    naming it, before anything reaches the database."""
    with pytest.raises(ValueError, match=named), scratch_engine.begin() as conn:
        bulk.executemany(conn, scratch.insert(), rows)
    assert scratch_rows(scratch_engine) == []


def test_a_value_the_type_refuses_raises_what_sqlalchemy_raises(scratch_engine: Engine,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A naive time, a `date` for a time, a text for a Boolean: SQLAlchemy raises StatementError (a
    SQLAlchemyError, which the app's handler answers and `ingest_group`'s callers expect) wrapping the
    type's error; bulk raises the same class with the same wrapped error, and nothing is written."""
    bad = [{"id": 2, "at": datetime(2026, 1, 1)}, {"id": 2, "at": datetime(2026, 1, 1).date()},
           {"id": 2, "flag": "yes"}]
    for row in bad:
        rows = [{"id": 1, **{k: None for k in row if k != "id"}}, row]
        got = []
        for through in (True, False):
            monkeypatch.setattr(bulk, "THROUGH_SQLALCHEMY", through)
            with pytest.raises(StatementError) as error, scratch_engine.begin() as conn:
                bulk.executemany(conn, scratch.insert(), rows)
            got.append((type(error.value), type(error.value.orig)))
        assert got[0] == got[1], row
    assert scratch_rows(scratch_engine) == []


def test_a_statement_with_returning_is_refused(scratch_engine: Engine) -> None:
    """bulk returns no rows, so a RETURNING statement (whose rows `conn.execute` would return) is refused
    rather than run with its rows thrown away."""
    for stmt in (scratch.insert().returning(scratch.c.id),
                 update(scratch).where(scratch.c.id == bindparam("key_id")).returning(scratch.c.id)):
        with pytest.raises(ValueError, match="RETURNING"), scratch_engine.begin() as conn:
            bulk.executemany(conn, stmt, [{"id": 1, "key_id": 1}] if isinstance(stmt, Update) else [{"id": 1}])
    assert scratch_rows(scratch_engine) == []


def test_plans_are_kept_per_driver_and_paramstyle_not_per_dialect_name(tmp_path: Path) -> None:
    """Two SQLite engines of one process with different paramstyles (qmark, named): one statement through
    both sends each driver what `conn.execute` sends it there (the SQL and the parameters' form),
    whichever engine made the first plan."""
    stmt = scratch.insert()
    rows = [{"id": 1, "at": BASE_TIME}, {"id": 2, "at": BASE_TIME.replace(microsecond=5)}]
    for name, paramstyle in [("a", "named"), ("b", "qmark"), ("c", "named")]:
        sent: dict[bool, list[Any]] = {}
        for through in (True, False):
            engine = create_engine(f"sqlite:///{tmp_path / name}-{through}.db", paramstyle=paramstyle)
            scratch_metadata.create_all(engine)

            def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool,
                       through: bool = through, sent: dict[bool, list[Any]] = sent) -> None:
                sent[through] = [statement, [type(p) for p in parameters], many]

            event.listen(engine, "before_cursor_execute", record)
            bulk.THROUGH_SQLALCHEMY = through
            try:
                with engine.begin() as conn:
                    bulk.executemany(conn, stmt, rows)
            finally:
                bulk.THROUGH_SQLALCHEMY = False
            engine.dispose()
        assert sent[False] == sent[True], paramstyle


def test_a_statement_built_per_call_gets_no_new_plan(engine: Engine) -> None:
    """ingest_group's statements are built once (module constants or cached per dialect): storing the
    batches again (new run_ids) makes no plan for a statement object the cache has not seen, so no
    statement is compiled per call or kept alive by the cache."""
    for batch in batches():
        store.ingest_group(engine, batch)
    statements = {key[0] for key in bulk._plans}
    for batch in batches():
        assert store.ingest_group(engine, batch) == [True] * len(batch)
    assert {key[0] for key in bulk._plans} - statements == set()


def test_a_run_id_stored_by_a_racing_writer_falls_back_to_one_by_one(engine: Engine,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer stores a run_id between the batch's SELECT and its INSERT: the driver's unique
    violation comes out of bulk as SQLAlchemy's IntegrityError, the batch's transaction is rolled back,
    and ingest_batch stores it again report by report (the raced report answered as already stored)."""
    reports = [make_report(f"race0{i}.example.com") for i in (1, 2, 3)]
    items = [(r, to_json(r).encode(), BASE_TIME) for r in reports]
    assert store.ingest_group(engine, items[1:2]) == [True]  # the racing writer's report
    raised: list[BaseException] = []
    real = bulk.executemany

    def watching(conn: Any, stmt: Any, rows: Any) -> None:
        try:
            real(conn, stmt, rows)
        except BaseException as e:
            raised.append(e)
            raise

    monkeypatch.setattr(bulk, "executemany", watching)
    monkeypatch.setattr(store, "RUNS_PRESENT", select(store.runs.c.run_id).where(  # sees no stored run
        store.runs.c.run_id.in_(bindparam("run_ids", expanding=True)), false()))
    assert store.ingest_group(engine, items) == [True, False, True]
    assert [type(e) for e in raised] == [IntegrityError]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 3
        assert conn.execute(text("SELECT count(*) FROM hosts")).scalar_one() == 3


def test_the_driver_path_sends_the_sql_sqlalchemy_sends(engine: Engine, reference: Engine,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every statement ingest_group sends the driver, in order, is the same text either way (no RETURNING
    the single-row compilation adds on PostgreSQL for an autoincrement key, no other form of a parameter),
    and each executemany stays one."""
    sent: dict[str, list[tuple[str, bool]]] = {"bulk": [], "sqlalchemy": []}
    for route, target in (("sqlalchemy", reference), ("bulk", engine)):
        def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool,
                   route: str = route) -> None:
            sent[route].append((statement, many))

        event.listen(target, "before_cursor_execute", record)
    for batch in batches():
        monkeypatch.setattr(bulk, "THROUGH_SQLALCHEMY", True)
        store.ingest_group(reference, batch)
        monkeypatch.setattr(bulk, "THROUGH_SQLALCHEMY", False)
        store.ingest_group(engine, batch)
    got, want = sent["bulk"], sent["sqlalchemy"]
    assert len(got) == len(want)
    for (got_sql, got_many), (want_sql, want_many) in zip(got, want, strict=True):
        if not want_many and " RETURNING " in want_sql and " RETURNING " not in got_sql:
            # one row: conn.execute asks for its inserted_primary_key, which bulk does not return
            want_sql = want_sql[:want_sql.index(" RETURNING ")]
        assert (got_sql, got_many) == (want_sql, want_many)
    assert any(many for _, many in got)


class _Shifted(UTCDateTime):
    """A UTCDateTime of another kind (its own process_bind_param): bulk must not take it for ours."""

    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        stored = super().process_bind_param(value, dialect)
        return None if stored is None else stored + timedelta(hours=1)


class _LocalIso(datetime):
    """A datetime whose isoformat() is its own (as some libraries' datetimes have)."""

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return super().isoformat("T", "seconds") + "Z"


def test_what_a_type_or_a_time_of_its_own_stores_is_what_sqlalchemy_stores(
        scratch_engine: Engine, reference: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subclass of UTCDateTime keeps its own processing, a datetime subclass is stored by its fields, a
    key left out gets the column's server default, None and Booleans go as they are: the same rows either
    way."""
    table = Table("bulk_scratch_2", MetaData(), Column("id", Integer, primary_key=True, autoincrement=False),
                  Column("at", UTCDateTime), Column("shifted", _Shifted), Column("flag", Boolean),
                  Column("other", Text, server_default="default"))
    t = _LocalIso(2026, 3, 29, 1, 30, 5, 7, tzinfo=ZoneInfo("Europe/Berlin"))
    rows = [{"id": 1, "at": t, "shifted": BASE_TIME, "flag": True},
            {"id": 2, "at": None, "shifted": None, "flag": None},
            {"id": 3, "at": t.replace(microsecond=0), "shifted": t, "flag": False}]
    stored_rows = []
    for target, through in ((reference, True), (scratch_engine, False)):
        table.metadata.create_all(target)
        monkeypatch.setattr(bulk, "THROUGH_SQLALCHEMY", through)
        with target.begin() as conn:
            bulk.executemany(conn, table.insert(), rows)
        with target.connect() as conn:
            stored_rows.append([tuple(r) for r in conn.exec_driver_sql("SELECT * FROM bulk_scratch_2 ORDER BY id")])
        table.metadata.drop_all(target)
    assert stored_rows[1] == stored_rows[0]


def test_statements_built_per_call_and_dropped_never_share_a_plan(scratch_engine: Engine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Statements built per call and dropped at once (their ids free for the next one), with the cache
    cleared every two plans: each call runs its own statement."""
    monkeypatch.setattr(bulk, "MAX_PLANS", 2)
    with scratch_engine.begin() as conn:
        bulk.executemany(conn, scratch.insert(), [{"id": i, "text": "-"} for i in range(1, 4)])
    for i in range(12):
        if i % 2:
            stmt: Any = update(scratch).where(scratch.c.id == bindparam("key_id"))
            rows: list[dict[str, Any]] = [{"key_id": i % 3 + 1, "text": f"u{i}"}]
        else:
            stmt = update(scratch).where(scratch.c.id == bindparam("key_id")).values(other=bindparam("o"))
            rows = [{"key_id": i % 3 + 1, "o": f"o{i}"}]
        with scratch_engine.begin() as conn:
            bulk.executemany(conn, stmt, rows)
        del stmt
    got = {(r[0], r[1], r[2]) for r in scratch_rows(scratch_engine)}
    assert got == {(1, "u9", "o6"), (2, "u7", "o10"), (3, "u11", "o8")}
    assert len(bulk._plans) <= 2


def test_a_statement_with_values_of_its_own_is_refused(scratch_engine: Engine) -> None:
    """SQL-side expressions with their own bound values (`x = x || 'x'`, `values(x=lower('Q'))`) are not
    for bulk: refused, naming the parameter; a row key the statement's own value replaces (conn.execute
    would drop the row's value) is refused, naming the key."""
    with scratch_engine.begin() as conn:
        bulk.executemany(conn, scratch.insert(), [{"id": 1, "text": "a"}])
    cases = [
        (update(scratch).where(scratch.c.id == bindparam("key_id")).values(text=scratch.c.text + "x"),
         [{"key_id": 1}], "parameter 'text_1' of the statement is not a row key"),
        (scratch.insert().values(other=func.lower("Q")), [{"id": 2}], "parameter 'lower_1'"),
        (scratch.insert().values(other=func.lower("Q")), [{"id": 2, "other": "row's"}], "row key 'other'"),
    ]
    for stmt, rows, message in cases:
        with pytest.raises(ValueError, match=message), scratch_engine.begin() as conn:
            bulk.executemany(conn, stmt, rows)
    assert scratch_rows(scratch_engine) == [(1, "a", "default", None, None)]
