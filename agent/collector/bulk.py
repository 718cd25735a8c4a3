"""Batched writes handed straight to the driver's `executemany`, without SQLAlchemy's work per row.

`executemany(conn, stmt, rows)` does what `conn.execute(stmt, rows)` does for an INSERT, UPDATE or DELETE
with a list of parameter dicts (all with the same keys), and sends the driver the same SQL and the same
values; only the route differs. SQLAlchemy compiles the statement once per engine's dialect and key set
(the same compiler and the same SQL text as `conn.execute`), and each row goes to the driver as a tuple
(SQLite's `?`) or a dict (psycopg's `%(name)s`) built by `operator.itemgetter`, with each value put in the
database's form: a `UTCDateTime` by `time_to_db` on SQLite's and psycopg's drivers (the same values as
its `process_bind_param` followed by the dialect's own DATETIME processing, tests/collector/test_bulk.py),
any other type that has a bind processor by SQLAlchemy's own processor; a time that recurs within one call
is converted once. What is saved per row: `construct_params`, the processors' dispatch and SQLite's
`%`-formatting of every datetime (17% of the collector's GIL samples under `bench/ingest_wrk.py` before,
bench/README.md "Fourth pass").

For statements without RETURNING (one with RETURNING is refused: its rows would be lost), compiled as
`conn.execute` compiles for several rows (`for_executemany`: no "RETURNING id" on PostgreSQL). An INSERT
that `conn.execute` would run through "insertmanyvalues" (a driver that asks for it without RETURNING:
psycopg2) is refused rather than sent row by row; SQLite and psycopg 3 run an INSERT without RETURNING
through `cursor.executemany` either way.

`THROUGH_SQLALCHEMY` (tests only) sends every statement through `conn.execute` instead: the reference
the stored rows are compared with.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Insert, UpdateBase

from agent.collector.tables import UTCDateTime

THROUGH_SQLALCHEMY = False
MAX_PLANS = 512


def _utc_naive(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the database")
    return value.astimezone(UTC).replace(tzinfo=None)


def _sqlite_time(value: datetime | None) -> str | None:
    # SQLAlchemy's SQLite DATETIME stores "%04d-%02d-%02d %02d:%02d:%02d.%06d" (year to microsecond) as
    # text, which is what `isoformat(" ", "microseconds")` writes for a naive datetime
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the database")
    # datetime's own isoformat: a subclass's (another format) is not what SQLAlchemy writes from the fields
    return datetime.isoformat(value.astimezone(UTC).replace(tzinfo=None), " ", "microseconds")


def time_to_db(dialect_name: str) -> Callable[[datetime | None], Any]:
    """How a `UTCDateTime` value goes to the driver: on SQLite the text SQLAlchemy's DATETIME stores, on
    PostgreSQL a naive UTC datetime (psycopg adapts it). None stays None; a naive datetime is refused
    with the ValueError `UTCDateTime` raises."""
    return _sqlite_time if dialect_name == "sqlite" else _utc_naive


@dataclass(frozen=True)
class _Plan:
    sql: str
    values: Callable[[Mapping[str, Any]], Any]  # the row's values in the statement's order (a tuple)
    names: tuple[str, ...] | None  # None: positional; else the dict keys for the driver, in that order
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, processor), not times
    times: tuple[int, ...]  # positions of UTCDateTime values
    time_to_db: Callable[[datetime | None], Any]
    sequence: Callable[[list[Any]], Any]  # the dialect's execute_sequence_format (tuple)
    stmt: UpdateBase  # kept, so that its id (the cache key) is not reused
    dialect: Dialect  # the same: each engine has its own (driver, paramstyle, options), as SQLAlchemy's cache


_plans: dict[tuple[int, int, tuple[str, ...]], _Plan] = {}


def _plan(stmt: UpdateBase, dialect: Dialect, keys: tuple[str, ...]) -> _Plan:
    if isinstance(stmt, Insert) and dialect.use_insertmanyvalues_wo_returning:
        raise ValueError(f"bulk.executemany: {dialect.name}'s driver would run this statement through "
                         "insertmanyvalues; use conn.execute")
    # compiled as conn.execute compiles for a list of rows: for_executemany, else PostgreSQL's INSERT of a
    # table with an autoincrement key gets the "RETURNING id" of a single row's compilation
    compiled = stmt.compile(dialect=dialect, column_keys=list(keys), for_executemany=True)
    if compiled.effective_returning:
        raise ValueError("bulk.executemany: a statement with RETURNING (its rows would be thrown away); "
                         "use conn.execute")
    order = list(compiled.positiontup) if compiled.positional and compiled.positiontup is not None \
        else list(compiled.binds)
    unused = [k for k in keys if k not in compiled.binds]
    if unused:  # conn.execute would ignore the value: never lose one silently
        raise ValueError(f"bulk.executemany: row key {unused[0]!r} is no parameter of the statement")
    processors: list[tuple[int, Callable[[Any], Any]]] = []
    times: list[int] = []
    for i, name in enumerate(order):
        bind = compiled.binds[name]
        if name not in keys or bind.callable is not None or bind.expanding:
            shown = compiled.bind_names.get(bind, name)  # as rendered: an anonymous one's key is not
            raise ValueError(f"bulk.executemany: parameter {shown!r} of the statement is not a row key")
        if type(bind.type) is UTCDateTime:  # not a subclass: it may process values its own way
            times.append(i)
            continue
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors.append((i, process))
    values: Callable[[Mapping[str, Any]], Any]
    if len(order) == 1:
        only = order[0]
        values = lambda row: (row[only],)  # noqa: E731
    else:
        values = operator.itemgetter(*order)
    escaped = compiled.escaped_bind_names
    names = None if compiled.positional else tuple(escaped.get(n, n) for n in order)
    return _Plan(compiled.string, values, names, tuple(processors), tuple(times), _time_processor(dialect),
                 dialect.execute_sequence_format, stmt, dialect)


def _time_processor(dialect: Dialect) -> Callable[[datetime | None], Any]:
    """`time_to_db` for the drivers it was checked against (tests/collector/test_bulk.py); for any other,
    SQLAlchemy's own processing of a UTCDateTime."""
    if (dialect.name, dialect.driver) in (("sqlite", "pysqlite"), ("postgresql", "psycopg")):
        return time_to_db(dialect.name)
    process = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert process is not None  # a TypeDecorator always has one (process_bind_param)
    return process


def _refused(rows: Sequence[Mapping[str, Any]], keys: tuple[str, ...], error: KeyError | None) -> Exception:
    """The ValueError naming the first row whose keys are not `keys`; else `error` (not about keys)."""
    want = set(keys)
    for i, row in enumerate(rows):
        if set(row) != want:
            extra, missing = sorted(set(row) - want), sorted(want - set(row))
            return ValueError(f"bulk.executemany: row {i} has keys unlike the first row's: extra {extra}, "
                              f"missing {missing}")
    assert error is not None
    return error


def executemany(conn: Connection, stmt: UpdateBase, rows: Sequence[Mapping[str, Any]]) -> None:
    """`conn.execute(stmt, rows)` for a long-lived `stmt` (a module constant or a cached one: plans are
    kept per statement and engine's dialect) and rows with the same keys. Nothing happens for no rows.
    Refused with ValueError before anything is sent, where `conn.execute` would drop a value silently or
    fail: a row whose keys are not the first row's, a key that is no parameter of the statement. A value
    its column's type refuses (a naive time, a text for a Boolean) raises what `conn.execute` raises:
    sqlalchemy.exc.StatementError wrapping the type's error."""
    if not rows:
        return
    if THROUGH_SQLALCHEMY:
        conn.execute(stmt, list(rows))
        return
    dialect = conn.dialect
    keys = tuple(rows[0])
    cache_key = (id(stmt), id(dialect), keys)
    plan = _plans.get(cache_key)
    if plan is None or plan.stmt is not stmt or plan.dialect is not dialect:
        if len(_plans) >= MAX_PLANS:
            _plans.clear()
        plan = _plans[cache_key] = _plan(stmt, dialect, keys)
    width = len(keys)
    if any(len(row) != width for row in rows):  # a key for another one (same width): KeyError below
        raise _refused(rows, keys, None)
    try:
        driver_rows = _driver_rows(plan, rows)
    except KeyError as e:
        raise _refused(rows, keys, e) from None
    except Exception as e:  # a type's processing refused a value: SQLAlchemy's StatementError wrapping it
        raise DBAPIError.instance(plan.sql, list(rows), e, dialect.loaded_dbapi.Error,
                                  hide_parameters=conn.engine.hide_parameters, dialect=dialect,
                                  ismulti=True) from e
    conn.exec_driver_sql(plan.sql, driver_rows)


def _driver_rows(plan: _Plan, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The rows in the driver's form (KeyError: a row without one of the plan's keys)."""
    values, processors, names = plan.values, plan.processors, plan.names
    times, to_db = plan.times, plan.time_to_db
    # a batch's rows repeat times (a report's received_at in several columns, items seen at one time):
    # each converted once per call. Keyed with `fold` too: two times of one zone compare equal on their
    # wall clock alone, so an ambiguous local time (fold 0 and 1, an hour apart) would share an entry.
    memo: dict[tuple[datetime, int], Any] = {}
    driver_rows: list[Any]
    if processors or times:
        driver_rows = []
        for row in rows:
            value = list(values(row))
            for i in times:
                t = value[i]
                if t is not None:
                    key = (t, t.fold)
                    got = memo.get(key)
                    if got is None:
                        got = memo[key] = to_db(t)
                    value[i] = got
            for i, process in processors:
                value[i] = process(value[i])
            driver_rows.append(plan.sequence(value) if names is None
                               else dict(zip(names, value, strict=True)))
    elif names is None:
        driver_rows = [plan.sequence(values(row)) for row in rows]
    else:
        driver_rows = [dict(zip(names, values(row), strict=True)) for row in rows]
    return driver_rows
