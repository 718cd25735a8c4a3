"""The collector's processes as tuned for load: SQLite's page cache and WAL checkpoints (db.py) and the
start-up heap frozen out of the garbage collector's way (heap.py). Their effect is measured by
bench/ingest_wrk.py; here, that each is in place where it should be, and nowhere else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.collector import db
from tests.live_collector import fresh_database

ROOT = Path(__file__).resolve().parents[2]


def test_a_connection_that_writes_gets_the_large_cache_a_reader_keeps_sqlites_default(tmp_path: Path) -> None:
    engine = db.create(f"sqlite:///{tmp_path / 'collector.db'}")
    try:
        with engine.connect() as conn:
            default_cache = conn.exec_driver_sql("PRAGMA cache_size").scalar()
            assert default_cache == -2000  # SQLite's default, 2,000 KiB
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == db.SQLITE_WAL_AUTOCHECKPOINT_PAGES
        for _ in range(2):  # set once, kept by the pooled connection
            with db.write(engine) as conn:
                assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -db.SQLITE_WRITER_CACHE_KIB
    finally:
        engine.dispose()
    other = db.create(f"sqlite:///{tmp_path / 'other.db'}")  # another engine's reader: untouched
    try:
        with other.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == default_cache
    finally:
        other.dispose()


# `serve` with uvicorn.run replaced: what the collector's heap looks like when it would start serving
SERVE_UNTIL_UVICORN = """
import gc, sys
import uvicorn
from agent.collector import cli
uvicorn.run = lambda app, **options: print("frozen", gc.get_freeze_count(), flush=True)
sys.exit(cli.main(["serve", "--db", sys.argv[1], "--listen", "127.0.0.1:0"]))
"""


def test_serve_freezes_its_start_up_heap_before_it_serves(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path, migrated=True) as url:
        result = subprocess.run([sys.executable, "-c", SERVE_UNTIL_UVICORN, url], cwd=ROOT, capture_output=True,
                                text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    frozen = [line for line in result.stdout.splitlines() if line.startswith("frozen ")]
    assert frozen and int(frozen[0].split()[1]) > 10_000, result.stdout  # modules, the app, the engine
