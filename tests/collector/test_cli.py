"""gitops-collector commands: migrate, token create/list/revoke, prune; the migration matches tables.py."""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from agent.collector import db, store, tokens
from agent.collector.cli import main
from agent.collector.tables import drift_items, host_commits, metadata, runs, sqlite_metadata
from agent.redact import redact_url
from agent.report import Status, to_json
from tests.factory import BASE_TIME, make_report


def test_migration_creates_exactly_the_tables_module(engine):
    # tables.sqlite_metadata: the tables that exist on SQLite only (0012's drift_task_counts)
    sqlite_only = set(sqlite_metadata.tables)
    with engine.connect() as conn:
        shared = MigrationContext.configure(conn, opts={
            "include_name": lambda name, kind, parent: kind != "table" or name not in sqlite_only})
        diff = compare_metadata(shared, metadata)
        alone = MigrationContext.configure(conn, opts={
            "include_name": lambda name, kind, parent: kind != "table" or name in sqlite_only})
        sqlite_diff = compare_metadata(alone, sqlite_metadata)
        tables = set(inspect(conn).get_table_names())
    assert diff == []
    if engine.dialect.name == "sqlite":
        assert sqlite_diff == [] and sqlite_only <= tables
    else:
        assert not sqlite_only & tables
    assert db.current_revision(engine) == db.head_revision()


def test_migrate_command_is_idempotent(db_url, capsys):
    assert main(["migrate", "--db", db_url]) == 0
    assert main(["migrate", "--db", db_url]) == 0
    assert f"revision {db.head_revision()}" in capsys.readouterr().out


def test_upgrade_from_the_first_revision_keeps_the_data(db_url, monkeypatch):
    engine = db.create(db_url)
    try:
        assert db.migrate(engine, "0001") == "0001"
        report = make_report("web01", status=Status.DRIFTED)
        with monkeypatch.context() as m:  # the drift review's tables (0007) and host_commits (0014) do not
            m.setattr(store.review_store, "record_report", lambda *a, **k: None)  # exist at 0001
            m.setattr(store, "_upsert_commit", lambda *a, **k: None)
            store.ingest(engine, report, to_json(report).encode(), received_at=BASE_TIME)
        with pytest.raises(db.DatabaseError, match="migrate"):
            db.prepare(engine)
        assert db.migrate(engine) == db.head_revision()
        db.prepare(engine)
        with engine.connect() as conn:
            assert conn.execute(select(runs.c.run_id)).scalars().all() == [report.run_id]
            assert conn.execute(select(host_commits)).all() == [(report.source.commit, "web01")]  # 0014's fill
    finally:
        engine.dispose()


def test_0014_fills_the_hosts_commits_from_the_runs_and_goes_back(db_url):
    """host_commits is filled from the runs stored; downgrading to 0013 builds ix_runs_commit_host again."""
    from alembic import command

    from tests.factory import COMMIT_A, COMMIT_B

    engine = db.create(db_url)
    try:
        db.migrate(engine)
        reports = [make_report("web01", commit=COMMIT_A, finished_at=BASE_TIME),
                   make_report("web01", commit=COMMIT_B, finished_at=BASE_TIME + timedelta(hours=1)),
                   make_report("web02", commit=COMMIT_B), make_report("web03", commit=None),
                   make_report("web04", commit="")]  # an empty commit is no commit: no pair, as at ingest
        for report in reports:
            store.ingest(engine, report, to_json(report).encode(), received_at=BASE_TIME)

        def pairs():
            with engine.connect() as conn:
                return sorted(tuple(r) for r in conn.execute(select(host_commits)))

        written = pairs()
        assert written == [(COMMIT_A, "web01"), (COMMIT_B, "web01"), (COMMIT_B, "web02")]
        config = db._alembic_config()
        with db.write(engine) as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0013")
        with engine.connect() as conn:
            assert "host_commits" not in inspect(conn).get_table_names()
            assert "ix_runs_commit_host" in {i["name"] for i in inspect(conn).get_indexes("runs")}
        assert db.migrate(engine) == db.head_revision()
        assert pairs() == written
        with engine.connect() as conn:
            names = {i["name"] for i in inspect(conn).get_indexes("runs")}
        assert "ix_runs_commit_finished" in names and "ix_runs_commit_host" not in names
    finally:
        engine.dispose()


def test_outdated_schema_is_refused(engine):
    with db.write(engine) as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    with pytest.raises(db.DatabaseError, match="gitops-collector migrate"):
        db.prepare(engine)


def test_token_create_prints_the_token_once_as_last_line_and_stores_a_hash(db_url, capsys, engine):
    assert main(["token", "create", "web01.example.com", "--db", db_url]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    secret = out[-1]
    assert secret.startswith(tokens.TOKEN_PREFIX) and len(secret) > 40
    principal = tokens.authenticate(engine, secret)
    assert principal == tokens.Principal(tokens.TokenKind.INGEST, "web01.example.com")
    with engine.connect() as conn:
        stored = conn.execute(select(tokens.tokens.c.token_hash)).scalars().all()
    assert stored == [tokens.hash_token(secret)]

    assert main(["token", "create", "--reader", "alice", "--db", db_url]) == 0
    reader_secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert tokens.authenticate(engine, reader_secret).kind is tokens.TokenKind.READER

    assert main(["token", "list", "--db", db_url]) == 0
    listing = capsys.readouterr().out
    assert "web01.example.com" in listing and "alice" in listing
    assert secret not in listing and reader_secret not in listing

    assert main(["token", "revoke", "alice", "--db", db_url]) == 0
    assert tokens.authenticate(engine, reader_secret) is None
    assert tokens.authenticate(engine, secret) is not None
    assert main(["token", "revoke", "alice", "--db", db_url]) == 1
    assert "no active token" in capsys.readouterr().err


def test_token_list_shows_a_token_of_a_kind_this_collector_does_not_know_and_revoke_takes_it(
        db_url, capsys, engine):
    """A newer collector sharing the database may write a kind this one does not know: the listing shows it
    as stored (text and JSON) instead of failing, so that an operator can see it and revoke it."""
    from sqlalchemy import update

    tokens.create(engine, tokens.TokenKind.INGEST, "web01.example.com", now=BASE_TIME)
    tokens.create(engine, tokens.TokenKind.INGEST, "web02.example.com", now=BASE_TIME)
    with engine.begin() as conn:
        conn.execute(update(tokens.tokens).where(tokens.tokens.c.name == "web02.example.com").values(kind="admin"))
    assert main(["token", "list", "--db", db_url]) == 0
    rows = [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows == [["1", "ingest", "web01.example.com"], ["2", "admin", "web02.example.com"]]
    with engine.begin() as conn:  # a terminal's escape sequence in a stored kind is printed, not obeyed
        conn.execute(update(tokens.tokens).where(tokens.tokens.c.name == "web02.example.com")
                     .values(kind="\x1b[2Jad"))  # the kind column holds 8 characters
    assert main(["token", "list", "--db", db_url]) == 0
    listed = capsys.readouterr().out
    assert "\x1b" not in listed and "\\x1b[2Jad" in listed
    assert main(["token", "list", "--json", "--db", db_url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["kind"], t["name"], t["revoked_at"]) for t in listed] == [
        ("ingest", "web01.example.com", None), ("\x1b[2Jad", "web02.example.com", None)]
    assert main(["token", "revoke", "web02.example.com", "--db", db_url]) == 0
    assert capsys.readouterr().out == "revoked 1 token(s)\n"
    assert main(["token", "list", "--json", "--db", db_url]) == 0
    assert [t["revoked_at"] is not None for t in json.loads(capsys.readouterr().out)] == [False, True]


def test_prune_keeps_each_hosts_latest_run(engine, db_url, capsys):
    old_time = BASE_TIME - timedelta(days=200)
    only_old = make_report("old-host", status=Status.DRIFTED, finished_at=old_time)
    old = make_report("web01", status=Status.DRIFTED, finished_at=old_time)
    recent = make_report("web01", finished_at=BASE_TIME)
    for report in (only_old, old, recent):
        store.ingest(engine, report, to_json(report).encode(), received_at=report.finished_at)
    assert main(["prune", "--older-than", "90d", "--db", db_url]) == 0
    assert "pruned 1 run(s)" in capsys.readouterr().out
    with engine.connect() as conn:
        kept = set(conn.execute(select(runs.c.run_id)).scalars())
        drift_left = set(conn.execute(select(drift_items.c.run_id)).scalars())
    assert kept == {only_old.run_id, recent.run_id}
    assert drift_left == {only_old.run_id}


def test_bad_arguments_exit_2_with_one_line(capsys):
    assert main(["prune", "--older-than", "soon"]) == 2
    assert capsys.readouterr().err == ("gitops-collector: prune: argument --older-than: 'soon' is not a duration "
                                       "(e.g. 90s, 10m, 1h, 90d) (see: gitops-collector prune --help)\n")
    assert main(["serve", "--listen", "foo"]) == 2  # was argparse's whole usage, ~22 lines
    assert capsys.readouterr().err == ("gitops-collector: serve: argument --listen: 'foo': expected HOST:PORT, "
                                       "e.g. 127.0.0.1:8080 (see: gitops-collector serve --help)\n")


def test_postgres_urls_use_psycopg3():
    assert db.normalize_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert db.normalize_url("postgres://h/db") == "postgresql+psycopg://h/db"
    assert db.normalize_url("sqlite:///x.db") == "sqlite:///x.db"
    assert "secret" not in redact_url("postgresql://u:secret@h/db")
    # the collector's messages name a database by its engine's URL, through the same agent.redact.redact_url
    engine = db.create("postgresql://u:secret@h/db?password=secret2")
    shown = redact_url(str(engine.url))
    assert "secret" not in shown and shown.startswith("postgresql+psycopg://***@h/db")
    engine.dispose()


def test_client_ca_needs_tls_and_limits_reach_the_settings(tmp_path, capsys):
    assert main(["serve", "--db", f"sqlite:///{tmp_path / 'c.db'}", "--tls-client-ca", "ca.pem"]) == 1
    assert capsys.readouterr().err == (
        "gitops-collector: serve: --tls-client-ca needs --tls-cert and --tls-key\n")
    from agent.collector.cli import _parser, _settings

    args = _parser().parse_args(["serve", "--max-depth", "5", "--max-string", "2KB", "--tls-cert", "c",
                                 "--tls-key", "k", "--tls-client-ca", "ca"])
    settings = _settings(args)
    assert (settings.payload.max_depth, settings.payload.max_string_chars) == (5, 2048)
    assert settings.client_cert_required
    assert not _settings(_parser().parse_args(["serve"])).client_cert_required


def test_serve_refuses_unusable_tls_files_and_a_taken_port_before_it_opens_a_database(tmp_path, capsys):
    """One line each, and no database made: a missing or wrong certificate (was uvicorn's traceback), and
    an address in use (was six lines of uvicorn's log, exit 3, and the database left behind)."""
    path = tmp_path / "collector.db"
    serve = ["serve", "--db", f"sqlite:///{path}"]
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    for cert, reason in ((tmp_path / "none.pem", "No such file or directory"), (tmp_path / "bad.pem", "PEM")):
        assert main([*serve, "--tls-cert", str(cert), "--tls-key", str(cert)]) == 78
        err = capsys.readouterr().err
        assert err.startswith(f"gitops-collector: serve: --tls-cert {cert} / --tls-key {cert}: cannot load them")
        assert err.count("\n") == 1 and reason in err, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main([*serve, "--listen", f"127.0.0.1:{port}"]) == 1
    assert capsys.readouterr().err == f"gitops-collector: serve: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert not path.exists()
