"""Database engines and migrations. SQLite (WAL, one writer at a time via BEGIN IMMEDIATE) by default;
PostgreSQL through psycopg 3 (`postgresql://` URLs are mapped to the `postgresql+psycopg` driver)."""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from agent.collector.errors import ConfigurationError, DatabaseError, NoDatabaseError
from agent.redact import redact_url

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 30.0
# SQLite's page cache and WAL checkpoints, set for what a collector does: many small writes to indexes
# spread over the whole file (https://sqlite.org/pragma.html#pragma_cache_size, #pragma_wal_autocheckpoint).
# A connection that writes keeps up to SQLITE_WRITER_CACHE_KIB of pages (SQLite's default is 2 MiB, which
# the B-trees' inner pages of a batch's indexes outgrow); the WAL is copied back into the database file
# every SQLITE_WAL_AUTOCHECKPOINT_PAGES pages (64 MiB at SQLite's 4 KiB pages; default 1,000 pages) rather
# than about 30 times a second under load, so that a page a batch changes again is copied back once. With
# both, about 1.2x the reports per second (docs/scale.md, section 2, "Seventh pass").
SQLITE_WRITER_CACHE_KIB = 32 * 1024
SQLITE_WAL_AUTOCHECKPOINT_PAGES = 16_384
_WRITE_LOCK = "gitops_write_lock"
_WRITER_CACHE = "gitops_writer_cache"
_NO_PG_DATABASE = re.compile(r'FATAL: +database ".*" does not exist')


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` use psycopg 3; everything else is passed through."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def create(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for `url`. SQLite files get WAL, FULL sync and a busy timeout. Raises ConfigurationError
    for a URL that names no database SQLAlchemy can open (a plain path, an unknown scheme)."""
    url = normalize_url(url)
    check_url(url)
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def check_url(url: str) -> None:
    """Refuse (ConfigurationError) what SQLAlchemy cannot parse as a URL, or whose scheme names no dialect or
    driver installed here (https://docs.sqlalchemy.org/en/20/core/engines.html#database-urls)."""
    expected = "expected sqlite:///RELATIVE/PATH, sqlite:////ABSOLUTE/PATH or postgresql://USER@HOST/NAME"
    # shown unless it may hold a password: user:password@host, or ?password=... (not all parse to redact)
    shown = repr(url) if "@" not in url and "?" not in url else "(not shown: it may hold a password)"
    try:
        make_url(url).get_dialect().import_dbapi()  # the driver module too (mysql:// needs MySQLdb)
    except (NoSuchModuleError, ImportError):  # NoSuchModuleError, a subclass of ArgumentError: first
        raise ConfigurationError(f"--db {shown}: no database driver for {make_url(url).drivername!r} here; "
                                 f"{expected}") from None
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigurationError(f"--db {shown} is not a database URL: {expected}") from None


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})
    # Writers of this process queue on a lock (first come, first served) rather than on SQLite's busy
    # handler, which polls with sleeps of up to 100 ms; other processes still meet the busy timeout.
    write_lock = threading.Lock()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event below emits BEGIN itself
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # the first read of the file
        except sqlite3.DatabaseError as e:
            if type(e) is not sqlite3.DatabaseError:  # OperationalError (locked, I/O): the callers' to handle
                raise
            raise DatabaseError(f"database {database}: {e}") from None  # "file is not a database"
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # the rows a REPLACE (INSERT OR REPLACE, UPDATE OR REPLACE) deletes fire DELETE triggers only with
        # this on (sqlite.org/lang_conflict.html): the drift counts' triggers (migration 0012) need them
        cursor.execute("PRAGMA recursive_triggers=ON")
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front, so two writers queue on the busy timeout instead of
        # failing when one upgrades a read snapshot that another has already changed.
        if not conn.get_execution_options().get("immediate", False):
            conn.exec_driver_sql("BEGIN")
            return
        if not write_lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_S):
            raise DatabaseError("timed out waiting for the SQLite write lock")
        try:
            if not conn.info.get(_WRITER_CACHE):  # once per connection, the first time it writes
                conn.exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_WRITER_CACHE_KIB}")
                conn.info[_WRITER_CACHE] = True
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            write_lock.release()
            raise
        conn.info[_WRITE_LOCK] = write_lock

    return engine


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed when the block ends without an exception."""
    with engine.connect().execution_options(immediate=True) as conn:
        try:
            with conn.begin():
                yield conn
        finally:
            lock = conn.info.pop(_WRITE_LOCK, None)
            if lock is not None:
                lock.release()


def _alembic_config() -> Config:
    config = Config()
    location = resources.files("agent.collector") / "migrations"
    config.set_main_option("script_location", str(location))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to `revision` (default: the newest); returns the revision reached."""
    config = _alembic_config()
    with write(engine) as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    return current_revision(engine)


def require_existing(url: str) -> None:
    """Refuse (NoDatabaseError) a SQLite URL whose file does not exist (or is empty), before anything
    creates it.
    A server database (PostgreSQL) is never created by connecting, so it needs no check here."""
    url = normalize_url(url)
    check_url(url)
    if not url.startswith("sqlite"):
        return
    database = make_url(url).database
    path = Path(database or "")
    if not database or database == ":memory:" or not path.is_file() or not path.stat().st_size:
        raise NoDatabaseError(f"no database at {database or url} (give --db or GITOPS_COLLECTOR_DB; "
                              "`gitops-collector migrate` creates one)")


def _one_line(error: SQLAlchemyError) -> str:
    """SQLAlchemy's message without its multi-line SQL and background link."""
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{error.__class__.__name__}: {text[0] if text else ''}"


def prepare(engine: Engine, *, auto_migrate_empty: bool = True) -> None:
    """Check the schema before serving: migrate an empty database (or refuse it, NoDatabaseError, when
    `auto_migrate_empty` is off), refuse an outdated one."""
    try:
        empty = not inspect(engine).get_table_names()
        if empty and auto_migrate_empty:
            log.info("empty database: creating the schema")
            migrate(engine)
            return
        if empty:
            raise NoDatabaseError(f"database {redact_url(str(engine.url))} has no tables: "
                                  "`gitops-collector migrate` creates them")
        current, head = current_revision(engine), head_revision()
    except SQLAlchemyError as e:
        orig = getattr(e, "orig", None)  # PostgreSQL: invalid_catalog_name, or said when connecting
        if getattr(orig, "sqlstate", None) == "3D000" or _NO_PG_DATABASE.search(str(orig)):
            raise NoDatabaseError(f"no database {redact_url(str(engine.url))} on that server") from e
        raise DatabaseError(f"database {redact_url(str(engine.url))}: {_one_line(e)}") from e
    if current != head:
        raise DatabaseError(
            f"database schema is at revision {current}, this collector needs {head}: "
            "run `gitops-collector migrate`"
        )
