"""Helpers to run the collector for real: throwaway databases (SQLite file or a fresh PostgreSQL database)
and `gitops-collector serve` as a subprocess on 127.0.0.1."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from agent.collector.db import normalize_url

PG_ENV = "GITOPS_TEST_POSTGRES_URL"


def postgres_admin_url() -> str:
    """The test server's URL, or skip (locally) / fail (under CI) when there is none."""
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{PG_ENV} is not set under CI: PostgreSQL tests must run (see .ci/postgres-up)")
        pytest.skip(f"{PG_ENV} is not set (run: export {PG_ENV}=$(bash .ci/postgres-up))")
    return url


# Migrated templates, one per kind and per test process (each xdist worker has its own): kind -> the
# SQLite file or the PostgreSQL database name. Migrating costs ~0.35 s on SQLite and ~1.1 s on PostgreSQL
# per database; a copy of an already migrated one costs a file copy or one CREATE DATABASE ... TEMPLATE.
_TEMPLATES: dict[str, str] = {}


def _migrated_template(kind: str, admin_url: str | None = None) -> str:
    """This process's migrated, never served, database of `kind`, made at its first use (removed at exit)."""
    if kind in _TEMPLATES:
        return _TEMPLATES[kind]
    from agent.collector import db  # the collector's own migration, as `db.prepare` runs it

    if kind == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="gitops-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        path = folder / "template.db"
        url = f"sqlite:///{path}"
    else:
        assert admin_url is not None
        name = f"gitops_tpl_{uuid.uuid4().hex[:12]}"
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        atexit.register(_drop_database, admin_url, name)
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = db.create(url)
    try:
        db.prepare(engine)
    finally:
        engine.dispose()  # no connection left: SQLite's WAL is folded into the file, PostgreSQL can copy it
    if kind == "sqlite" and any(folder.glob("template.db-*")):
        raise RuntimeError(f"the SQLite template {path} still has a WAL or journal file after closing")
    _TEMPLATES[kind] = str(path) if kind == "sqlite" else name
    return _TEMPLATES[kind]


def _drop_database(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def fresh_database(kind: str, tmp_path: Path, *, migrated: bool = False) -> Iterator[str]:
    """A URL of a database of `kind` ("sqlite" or "postgresql") of its own, removed afterwards: empty, or
    with `migrated` a copy of a database the collector's migrations brought to the newest revision (what
    `db.prepare` makes of an empty one, without paying for the migrations each time)."""
    if kind == "sqlite":
        path = tmp_path / "collector.db"
        if migrated:
            shutil.copyfile(_migrated_template("sqlite"), path)
        yield f"sqlite:///{path}"
        return
    admin_url = normalize_url(postgres_admin_url())
    name = f"gitops_t_{uuid.uuid4().hex[:12]}"
    template = f' TEMPLATE "{_migrated_template(kind, admin_url)}"' if migrated else ""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{template}'))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def collector_cli(db_url: str, *args: str) -> str:
    """Run `gitops-collector ARGS --db DB_URL`; its last output line (a token, for `token create`)."""
    out = subprocess.run([sys.executable, "-m", "agent.collector.cli", *args, "--db", db_url], check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def token(db_url: str, *args: str) -> str:
    """A new token: `token(db, "web01")` for ingest, `token(db, "--reader", "ops")` for a reader."""
    return collector_cli(db_url, "token", "create", *args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class CollectorProcess:
    """`gitops-collector serve` on address:port (127.0.0.1 unless told) as a child process."""

    def __init__(self, db_url: str, port: int | None = None, *extra: str,
                 ca_file: Path | None = None, client_cert: tuple[Path, Path] | None = None,
                 address: str = "127.0.0.1") -> None:
        self.db_url = db_url
        self.address = address
        self.port = port or free_port()
        self.extra = extra
        self.ca_file = ca_file
        self.client_cert = client_cert
        self.url = f"{'https' if ca_file else 'http'}://{address}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr: IO[bytes] | None = None
        self.log = ""

    def start(self, timeout_s: float = 30.0) -> CollectorProcess:
        cmd = [sys.executable, "-m", "agent.collector.cli", "serve", "--listen", f"{self.address}:{self.port}",
               "--db", self.db_url, "--log-level", "warning", *self.extra]
        # its own process group, so that stopping it also stops any worker processes it forked
        # stderr goes to a file, not a pipe: a pipe nobody reads fills up and blocks a collector that logs
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in kill(), it outlives this call)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited: {self.log_text()}")
            try:
                verify = self.tls_context() if self.ca_file else True
                if httpx.get(f"{self.url}/healthz", timeout=1.0, verify=verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("collector did not become healthy in time")

    def log_text(self) -> str:
        """What the collector has written to stderr so far (its log; kept after it stopped)."""
        if self.stderr is not None:
            self.stderr.seek(0)
            self.log = self.stderr.read().decode(errors="replace")
        return self.log

    def tls_context(self) -> ssl.SSLContext:
        """Trusts the collector's CA and presents `client_cert` (certificate, key) when given."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self.client_cert is not None:
            context.load_cert_chain(*map(str, self.client_cert))
        return context

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the collector's process group, wait, and make sure nothing of it is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers (workers) of this group only
        self.proc = None
        if self.stderr is not None:
            self.log_text()
            self.stderr.close()
            self.stderr = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
