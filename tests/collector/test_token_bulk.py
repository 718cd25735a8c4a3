"""`gitops-collector token create --hosts-from FILE`: every host's ingest token in one transaction, printed
as HOST<TAB>TOKEN or written to one 0600 file per host; a bad or repeated name stops everything with the
line it is on."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from agent.collector import tokens
from agent.collector.cli import main


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tokens.tokens)).scalar_one())


def test_bulk_prints_host_tab_token(db_url: str, engine: Engine, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# the web tier\nweb01.example.com\n\nweb02.example.com  # new\ndb01\n")
    assert main(["token", "create", "--hosts-from", str(hosts), "--db", db_url]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    pairs = dict(line.split("\t") for line in lines)
    assert list(pairs) == ["web01.example.com", "web02.example.com", "db01"]
    for host, secret in pairs.items():
        assert tokens.authenticate(engine, secret) == tokens.Principal(tokens.TokenKind.INGEST, host)


def test_bulk_out_dir_writes_private_files(db_url: str, engine: Engine, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("web01\nweb02\n")
    out = tmp_path / "out"
    assert main(["token", "create", "--hosts-from", str(hosts), "--out-dir", str(out), "--db", db_url]) == 0
    assert capsys.readouterr().out == ""  # no secret on the terminal
    for host in ("web01", "web02"):
        path = out / host
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert tokens.authenticate(engine, path.read_text().strip()) is not None
    # a second run would overwrite: refused before anything is created
    assert main(["token", "create", "--hosts-from", str(hosts), "--out-dir", str(out), "--db", db_url]) == 1
    assert "already exists" in capsys.readouterr().err
    assert _count(engine) == 2


@pytest.mark.parametrize(("text", "message"), [
    ("web01\nweb02\nweb01\n", "line 3: 'web01' is already on line 1"),
    ("web01\nbad host\n", "line 2: 'bad host'"),
    ("web01\n-x\n", "line 2"),
    ("# nothing\n\n", "no host names"),
])
def test_bulk_refuses_the_whole_file(db_url: str, engine: Engine, tmp_path: Path, text: str, message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(text)
    assert main(["token", "create", "--hosts-from", str(hosts), "--db", db_url]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert _count(engine) == 0


def test_bulk_option_errors(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "--hosts-from", str(tmp_path / "none"), "--db", db_url]) == 1
    assert "cannot read it" in capsys.readouterr().err
    assert main(["token", "create", "web01", "--out-dir", str(tmp_path), "--db", db_url]) == 1
    assert "--out-dir goes with --hosts-from" in capsys.readouterr().err
