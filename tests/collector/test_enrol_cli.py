"""`gitops-collector enrol list | approve | deny` and `token create --enrol NAME`, in-process on the
database, as an operator at the collector's console uses them."""

from __future__ import annotations

import getpass
import hashlib
import json

import pytest
from sqlalchemy import Engine

from agent.collector import enrolment, tokens
from agent.collector.cli import main
from agent.collector.enrolment import EnrolAuth, EnrolPolicy, EnrolState
from tests.factory import BASE_TIME


def _ask(engine: Engine, host: str, groups: tuple[str, ...] = (), address: str = "10.0.0.5") -> str:
    made, _ = enrolment.request(engine, host=host, groups=groups,
                                pickup_hash=hashlib.sha256(host.encode() + address.encode()).hexdigest(),
                                auth=EnrolAuth.SECRET, auth_name="site-a", address=address,
                                policy=EnrolPolicy(), now=BASE_TIME)
    return made.id


def test_the_site_secret_is_a_token_of_kind_enrol(db_url: str, engine: Engine,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "--enrol", "site-a", "--db", db_url]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert tokens.authenticate(engine, secret) == tokens.Principal(tokens.TokenKind.ENROL, "site-a")
    assert main(["token", "list", "--json", "--db", db_url]) == 0
    assert [t["kind"] for t in json.loads(capsys.readouterr().out)] == ["enrol"]


def test_list_approve_by_pattern_and_deny_with_who_and_why(db_url: str, engine: Engine,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    web, db, known = _ask(engine, "web07", ("web",)), _ask(engine, "db07", ("db",)), _ask(engine, "web01")
    tokens.create(engine, tokens.TokenKind.INGEST, "web01", now=BASE_TIME)
    assert main(["enrol", "list", "--db", db_url]) == 0
    table = capsys.readouterr().out
    assert "web07" in table and "groups=web" in table and "10.0.0.5" in table
    assert "EXISTING HOST" in next(line for line in table.splitlines() if "web01" in line)

    code = main(["enrol", "approve", "--pattern", "web*", "--reason", "rack 12", "--db", db_url])
    out, err = capsys.readouterr()
    assert code == 1  # web01 was left pending, and the operator is told why
    assert out == f"approved {web} web07\n"
    assert f"left pending {known} web01: host 'web01' already has a token or reports" in err
    assert main(["enrol", "deny", db, "--reason", "not ours", "--by", "olga", "--db", db_url]) == 0
    assert capsys.readouterr().out == f"denied {db} db07\n"

    assert main(["enrol", "list", "--all", "--json", "--db", db_url]) == 0
    rows = {r["host"]: r for r in json.loads(capsys.readouterr().out)}
    assert (rows["web07"]["state"], rows["web07"]["decided_by"], rows["web07"]["reason"]) == (
        "approved", f"cli:{getpass.getuser()}", "rack 12")
    assert (rows["db07"]["state"], rows["db07"]["decided_by"]) == ("denied", "olga")
    assert rows["web01"]["state"] == "pending"
    assert [r.host for r in enrolment.list_requests(engine, (EnrolState.PENDING,))] == ["web01"]


def test_refusals_are_one_line(db_url: str, engine: Engine, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    web = _ask(engine, "web07")
    assert main(["enrol", "approve", web, "--db", db_url]) == 2  # --reason is required
    assert "the following arguments are required: --reason" in capsys.readouterr().err
    assert main(["enrol", "approve", "--reason", "x", "--db", db_url]) == 1
    assert "give exactly one of" in capsys.readouterr().err
    assert main(["enrol", "approve", "nope", "--reason", "x", "--db", db_url]) == 1
    assert "no pending enrolment request 'nope'" in capsys.readouterr().err
    assert main(["enrol", "approve", "--pattern", "web*", "--existing", "--reason", "x", "--db", db_url]) == 1
    assert "existing: only with request ids" in capsys.readouterr().err
    assert main(["enrol", "list", "--db", f"sqlite:///{tmp_path / 'none.db'}"]) == 66
    assert not (tmp_path / "none.db").exists()
