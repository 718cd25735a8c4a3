"""`gitops-collector hosts|host|drift|runs|run|commits|commit` against a real collector subprocess
(SQLite) seeded through the ingest API; and the bad-input table of the collector's command line."""

from __future__ import annotations

import json
import os
import pty
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.collector import db, tokens
from agent.collector.cli import main
from agent.collector.tokens import TokenKind
from agent.report import DriftItem, DriftKind, Status, to_json
from tests.collector import ui_fleet
from tests.factory import make_report
from tests.live_collector import CollectorProcess, free_port

HOSTILE_TASK = "tune \x1b]0;owned\x07\x1b[2J"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A collector with the browser tests' fleet, plus one host whose task name holds terminal escapes."""
    tmp = tmp_path_factory.mktemp("fleet-cli")
    url = f"sqlite:///{tmp / 'collector.db'}"
    engine = db.create(url)
    db.prepare(engine)
    now = datetime.now(UTC)
    reader = tokens.create(engine, TokenKind.READER, "ops", now=now)[1]
    ingest = tokens.create(engine, TokenKind.INGEST, "web01.dc1.example.com", now=now)[1]
    revoked = tokens.create(engine, TokenKind.READER, "gone", now=now)[1]
    tokens.revoke(engine, "gone", now=now)
    server = CollectorProcess(url).start()
    try:
        latest = ui_fleet.seed(engine, server.url, now)
        hostile = make_report("term01.example.com", status=Status.DRIFTED, drift=(
            DriftItem("term servers", HOSTILE_TASK, "web", "copy", DriftKind.CORRECTIVE),))
        secret = tokens.create(engine, TokenKind.INGEST, hostile.host, now=now)[1]
        assert httpx.post(f"{server.url}/api/v1/reports", content=to_json(hostile),
                          headers={"Authorization": f"Bearer {secret}"}).status_code == 201
        files = {}
        for name, text, mode in (("reader", reader, 0o600), ("ingest", ingest, 0o600),
                                 ("revoked", revoked, 0o600), ("open", reader, 0o644), ("empty", "\n", 0o600)):
            files[name] = tmp / name
            files[name].write_text(text + "\n")
            files[name].chmod(mode)
        yield {"url": server.url, "files": files, "latest": latest, "tmp": tmp, "db": url}
    finally:
        server.stop()
        engine.dispose()


@pytest.fixture
def cli(live, capsys, monkeypatch):
    """Run `gitops-collector ARGS` in-process against the live collector; returns (code, out, err)."""
    for name in ("GITOPS_COLLECTOR_URL", "GITOPS_COLLECTOR_TOKEN", "GITOPS_COLLECTOR_TOKEN_FILE",
                 "GITOPS_COLLECTOR_CA_FILE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(live["tmp"] / "no-config"))

    def run(*args: str, token: str = "reader", url: str | None = None) -> tuple[int, str, str]:
        auth = ["--token-file", str(live["files"][token])] if token else []
        code = main([*args, "--url", url or live["url"], *auth])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_hosts_json_is_the_api_listing_most_severe_first(cli):
    code, out, err = cli("hosts", "--limit", "0")
    assert (code, err) == (0, "")
    body = json.loads(out)  # not a terminal: JSON
    assert body["total"] == len(body["items"]) == 31 and body["counts"]["failed"] == 1
    statuses = [h["status"] for h in body["items"]]
    severity = ["failed", "error", "drifted", "paused", "corrected", "in_sync"]
    assert statuses == sorted(statuses, key=severity.index)
    assert statuses[:3] == ["failed", "error", "drifted"]


def test_hosts_table_with_filters_and_a_paging_note(cli):
    code, out, _ = cli("hosts", "--table", "--role", "db")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["HOST", "STATUS", "COMMIT", "DRIFT", "LAST", "SEEN", "ROLES"]
    assert [line.split()[0] for line in lines[1:5]] == [
        "db04.dc1.example.com", "db02.dc1.example.com", "db01.dc1.example.com", "db03.dc1.example.com"]
    assert "fleet: 31 hosts; failed 1, error 1, drifted 7" in lines[-1]
    _, out, _ = cli("hosts", "--table", "--limit", "3", "--status", "in_sync")
    assert "3 of 20 hosts (--limit N for more, 0 for all)" in out
    _, out, _ = cli("hosts", "--json", "--stale", "--limit", "0")
    assert json.loads(out)["items"] == []  # nobody is overdue in this fleet


def test_host_drift_runs_run_commits_commit(cli, live):
    _, out, _ = cli("host", "web03.dc1.example.com", "--table")
    assert out.startswith("web03.dc1.example.com: drifted after phase done")
    assert "corrective   nginx: main config" in out and "drift: 2 task(s)" in out
    assert json.loads(cli("host", "web03.dc1.example.com")[1])["drift_count"] == 2

    _, out, _ = cli("drift", "--table")
    assert out.splitlines()[1].split()[:4] == ["5", "sysctl:", "tune", "network"]
    body = json.loads(cli("drift", "--by-host", "--task", "sysctl: tune network")[1])
    assert body["group"] == "host" and body["total"] == 5

    _, out, _ = cli("runs", "--host", "db01.dc1.example.com", "--table", "--limit", "2")
    assert out.count("db01.dc1.example.com") == 2 and "2 of 7 runs" in out
    runs = json.loads(cli("runs", "--status", "failed", "--limit", "0")[1])
    assert runs["items"] and {r["status"] for r in runs["items"]} == {"failed"}

    run_id = live["latest"]["web11.dc1.example.com"].run_id
    _, out, _ = cli("run", run_id, "--table")
    assert f"run {run_id} on web11.dc1.example.com: failed" in out
    assert "failed     restart nginx: service failed" in out

    commits = json.loads(cli("commits")[1])["items"]
    new = next(c for c in commits if c["sha"] == ui_fleet.NEW)
    assert (new["running"], new["converged"], new["hosts_total"]) == (20, 15, 31)
    _, out, _ = cli("commit", ui_fleet.NEW[:8], "--table", "--not-reached", "--limit", "0")
    assert "20 of 31 hosts run it: 15 converged, 5 drifted" in out and "hosts not running it:" in out
    assert "lb01.dc1.example.com" in out


def test_tables_escape_terminal_control_characters(cli):
    code, out, _ = cli("drift", "--table", "--host", "term01.example.com", "--by-host")
    assert code == 0 and "\x1b" not in out and "\x07" not in out
    assert "tune \\x1b]0;owned\\x07\\x1b[2J" in out
    assert HOSTILE_TASK in json.loads(cli("drift", "--by-host", "--host", "term01.example.com")[1])[
        "items"][0]["task"]  # JSON keeps the value as it was (escaped by JSON itself)


def test_a_terminal_gets_a_table_and_env_settings_work(live, tmp_path):
    """A real process on a pseudo-terminal: a coloured table by default, URL and token from the env."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "GITOPS_COLLECTOR_URL": live["url"],
           "GITOPS_COLLECTOR_TOKEN": live["files"]["reader"].read_text().strip()}
    env.pop("NO_COLOR", None)
    env.pop("GITOPS_COLLECTOR_TOKEN_FILE", None)
    proc = subprocess.run([sys.executable, "-m", "agent.collector.cli", "hosts", "--status", "failed"],
                          stdout=secondary, stderr=subprocess.PIPE, env=env, timeout=60, check=False)
    os.close(secondary)
    out = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(primary)
    assert proc.returncode == 0, proc.stderr
    text = out.decode()
    assert "HOST" in text and "web11.dc1.example.com" in text and "\x1b[31mfailed\x1b[0m" in text


def test_a_closed_pipe_ends_quietly(live):
    """`gitops-collector runs | head -1` on more rows than a pipe buffer: no BrokenPipeError traceback."""
    env = {**os.environ, "GITOPS_COLLECTOR_URL": live["url"],
           "GITOPS_COLLECTOR_TOKEN_FILE": str(live["files"]["reader"])}
    # the JSON (about 100 KB) outgrows the pipe's buffer: the write fails; the table may fit in it
    for output, codes in (("--json", ("141",)), ("--table", ("0", "141"))):
        proc = subprocess.run(f"{sys.executable} -m agent.collector.cli runs --limit 0 {output} | head -c 10; "
                              "echo \" rc=${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash", env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.stderr == "", proc.stderr
        assert proc.stdout.rsplit(" rc=", 1)[1].strip() in codes, proc.stdout


@dataclass
class Bad:
    """One bad input: the command line, the exit code and a fragment of the one line on stderr."""

    args: tuple[str, ...]
    code: int
    message: str
    token: str = "reader"
    url: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def _down() -> str:
    return f"http://127.0.0.1:{free_port()}"


BAD_QUERIES = {
    "unknown host": Bad(("host", "nope.example.com"), 66, "host 'nope.example.com' has never reported"),
    "unknown host's runs": Bad(("runs", "--host", "nope"), 66, "host 'nope' has never reported"),
    "unknown run": Bad(("run", "00000000-0000"), 66, "run '00000000-0000' is not stored"),
    "unknown commit": Bad(("commit", "abcdef12"), 66, "no host has reported commit 'abcdef12'"),
    "ambiguous or short sha": Bad(("commit", "ab"), 1, "sha: give at least 4 hex digits"),
    "URL without a scheme": Bad(("hosts",), 78, "expected http(s)://HOST[:PORT]", url="127.0.0.1:8080"),
    "URL of another scheme": Bad(("hosts",), 78, "collector URL 'ftp://x'", url="ftp://x"),
    "URL with a bad port": Bad(("hosts",), 78, "expected http(s)://", url="http://127.0.0.1:99999"),
    "URL of something else": Bad(("hosts",), 78, "does not look like a collector", url="{live}/prefix"),
    "collector not running": Bad(("hosts",), 69, "Connection refused", url="{down}"),
    "TLS to a plain HTTP port": Bad(("hosts",), 69, "cannot reach the collector", url="{live_https}"),
    "missing token file": Bad(("hosts", "--token-file", "/nonexistent/token"), 78,
                              "token file /nonexistent/token: no such file", token=""),
    "token file others can read": Bad(("hosts",), 78, "lets others read it; chmod 600", token="open"),
    "empty token file": Bad(("hosts",), 78, "empty", token="empty"),
    "no token anywhere": Bad(("hosts",), 78, "no reader token: give --token-file FILE", token=""),
    "revoked token": Bad(("hosts",), 77, "refused the token: unknown or revoked token", token="revoked"),
    "ingest token": Bad(("drift",), 77, "an ingest token cannot read", token="ingest"),
    "missing CA file": Bad(("hosts", "--ca-file", "/nonexistent/ca.pem"), 78, "CA file /nonexistent/ca.pem",
                           url="https://127.0.0.1:1"),
}


@pytest.mark.parametrize("case", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_bad_query_inputs_give_one_line_and_their_exit_code(cli, live, case):
    url = (case.url or live["url"]).format(live=live["url"], down=_down(),
                                           live_https=live["url"].replace("http:", "https:"))
    code, out, err = cli(*case.args, token=case.token, url=url)
    assert code == case.code, err
    assert out == "" and err.count("\n") == 1 and err.startswith("gitops-collector: "), err
    assert case.message in err


@pytest.mark.parametrize("args", [("token", "list"), ("token", "list", "--json"), ("token", "revoke", "3"),
                                  ("prune", "--older-than", "90d")], ids=" ".join)
def test_commands_that_need_a_database_never_create_one(tmp_path, capsys, args):
    path = tmp_path / "sub" / "collector.db"
    assert main([*args, "--db", f"sqlite:///{path}"]) == 66
    err = capsys.readouterr().err
    assert err == (f"gitops-collector: no database at {path} (give --db or GITOPS_COLLECTOR_DB; "
                   "`gitops-collector migrate` creates one)\n")
    assert not path.exists() and not path.parent.exists()


def test_default_database_path_is_not_created_either(tmp_path, monkeypatch, capsys):
    """Without --db the default path is used: refused the same way, nothing made under /var/lib."""
    monkeypatch.delenv("GITOPS_COLLECTOR_DB", raising=False)
    from agent.collector import cli as collector_cli
    made_before = Path(collector_cli.DEFAULT_DB.removeprefix("sqlite:///")).parent.exists()
    assert main(["token", "list"]) == 66
    assert "no database at /var/lib/gitops-collector/collector.db" in capsys.readouterr().err
    assert Path("/var/lib/gitops-collector").exists() == made_before


def test_an_empty_database_is_not_migrated_by_a_read(tmp_path, capsys):
    path = tmp_path / "empty.db"
    path.touch()  # SQLite would take a 0-byte file for an empty database
    assert main(["token", "list", "--db", f"sqlite:///{path}"]) == 66
    assert f"no database at {path}" in capsys.readouterr().err
    assert path.stat().st_size == 0
    with sqlite3.connect(path) as conn:  # a database file without the collector's tables
        conn.execute("PRAGMA user_version = 7")
    assert main(["token", "list", "--db", f"sqlite:///{path}"]) == 66
    assert "has no tables: `gitops-collector migrate` creates them" in capsys.readouterr().err
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


@pytest.mark.postgres
def test_a_missing_postgresql_database_is_named_in_one_line(capsys):
    from sqlalchemy.engine import make_url

    from tests.live_collector import postgres_admin_url
    url = make_url(postgres_admin_url()).set(database="gitops_no_such_db").render_as_string(False)
    assert main(["token", "list", "--db", url]) == 66
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no database postgresql+psycopg://" in err and "gitops_no_such_db" in err


def test_token_list_json(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["token", "create", "web01", "--db", url]) == 0
    assert main(["token", "create", "--reader", "alice", "--db", url]) == 0
    assert main(["token", "revoke", "alice", "--db", url]) == 0
    secrets = [line for line in capsys.readouterr().out.splitlines() if line.startswith("gco_")]
    assert main(["token", "list", "--json", "--db", url]) == 0
    out = capsys.readouterr().out
    listed = json.loads(out)
    assert [(t["id"], t["kind"], t["name"]) for t in listed] == [(1, "ingest", "web01"), (2, "reader", "alice")]
    assert listed[0]["revoked_at"] is None and listed[1]["revoked_at"].endswith("Z")
    assert set(listed[0]) == {"id", "kind", "name", "prefix", "created_at", "revoked_at"}
    assert not any(secret in out for secret in secrets)


def test_every_query_command_is_in_the_parser():
    """Every query command is wired into the parser and documented in --help."""
    from agent.collector.cli import build_parser
    from agent.collector.fleet_cli import COMMANDS, QUERIES

    assert set(QUERIES) == set(COMMANDS)
    help_text = build_parser().format_help()
    assert all(name in help_text for name in COMMANDS)



def test_each_listing_has_its_documented_default_limit():
    """docs/collector.md: lists show 100 rows, `runs` 20. (`runs` once set its default on a parent parser
    shared by all listings, which made every listing's default 20.)"""
    from agent.collector.cli import _parser

    parser = _parser()
    defaults = {command: parser.parse_args([command, *extra]).limit
                for command, extra in (("hosts", ()), ("drift", ()), ("commits", ()), ("commit", ("abcd",)),
                                       ("runs", ()))}
    assert defaults == {"hosts": 100, "drift": 100, "commits": 100, "commit": 100, "runs": 20}


BAD_DATABASES = {
    "a plain path": ("{tmp}/c.db", 78, "--db '{tmp}/c.db' is not a database URL: expected sqlite:///"),
    "an unknown scheme": ("notadb://x", 78, "--db 'notadb://x': no database driver for 'notadb' here"),
    "a driver not installed": ("postgresql+psycopg3://h/d", 78, "no database driver for 'postgresql+psycopg3' here"),
    "no URL, though it starts with sqlite": ("sqlite.db", 78, "--db 'sqlite.db' is not a database URL"),
    "a port that is no number": ("postgresql://h:abc/d", 78, "--db 'postgresql+psycopg://h:abc/d' is not a database URL"),
    "a dialect without its driver module": ("mysql://h/d", 78, "--db 'mysql://h/d': no database driver for "
                                            "'mysql' here"),
    "a password in what does not parse": ("user:secret@/x", 78, "(not shown: it may hold a password)"),
    "a password in a query": ("psql://h/d?password=secret", 78, "(not shown: it may hold a password)"),
    "a file of something else": ("sqlite:///{tmp}/text", 1, "database {tmp}/text: file is not a database"),
}


@pytest.mark.parametrize("command", [("token", "list"), ("migrate",), ("token", "create", "--reader", "ops"),
                                     ("drift", "list")], ids=" ".join)
@pytest.mark.parametrize("case", BAD_DATABASES.values(), ids=BAD_DATABASES.keys())
def test_a_bad_database_url_or_file_is_one_line(tmp_path, capsys, command, case):
    url, code, message = (part.format(tmp=tmp_path) if isinstance(part, str) else part for part in case)
    (tmp_path / "text").write_text("not a database\n")
    assert main([*command, "--db", url]) == code
    err = capsys.readouterr().err
    assert err.startswith("gitops-collector: ") and err.count("\n") == 1 and message in err, err
    assert "secret" not in err
    assert (tmp_path / "text").read_text() == "not a database\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text"]  # nothing made


def test_token_create_refuses_bad_input_before_it_makes_a_database(tmp_path, capsys):
    path = tmp_path / "new.db"
    hosts = tmp_path / "hosts"
    hosts.write_text("web01.example.com\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "web01.example.com").write_text("kept\n")
    for args, message in ((("--hosts-from", "/nonexistent"), "--hosts-from /nonexistent: cannot read it"),
                          (("--hosts-from", str(hosts), "--out-dir", str(tmp_path / "out")),
                           "web01.example.com already exists")):
        assert main(["token", "create", *args, "--db", f"sqlite:///{path}"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not path.exists()
    assert (tmp_path / "out" / "web01.example.com").read_text() == "kept\n"
    assert main(["token", "create", "--reader", "ops", "--out-dir", str(tmp_path / "o"),
                 "--db", f"sqlite:///{path}"]) == 1
    assert capsys.readouterr().err == "gitops-collector: token create: --out-dir goes with --hosts-from\n"
    assert main(["token", "create", "--hosts-from", str(hosts), "--out-dir", str(tmp_path / "new"),
                 "--db", "notadb://x"]) == 78
    assert "no database driver" in capsys.readouterr().err
    assert not path.exists() and not (tmp_path / "o").exists() and not (tmp_path / "new").exists()
    # an empty name is refused as a name, not taken for a missing host (was an AttributeError)
    assert main(["token", "create", "--reader", "", "--db", f"sqlite:///{path}"]) == 1
    assert capsys.readouterr().err == "gitops-collector: token name '': give 1 to 255 characters\n"
