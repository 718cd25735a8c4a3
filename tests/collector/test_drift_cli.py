"""`gitops-collector drift list|ack|accept|revoke|export` on a real database: each command, its --json twin, the
audit log's `cli:USER` actor, and every refusal as one line with its exit code."""

from __future__ import annotations

import getpass
import json
import subprocess
import zipfile
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from agent.collector import db, drift_cli, store
from agent.collector.cli import _parser, main
from agent.collector.tables import review_audit, review_items
from agent.report import DriftItem, DriftKind, Status, to_json
from tests.factory import BASE_TIME, make_report

WEB = "web01.example.com"
USER = f"cli:{getpass.getuser()}"


def drift(task: str) -> DriftItem:
    return DriftItem(play="web servers", task=task, role="web", module="ansible.builtin.template",
                     kind=DriftKind.CORRECTIVE, ansible_role="nginx", task_path="roles/nginx/tasks/main.yml:3",
                     first_seen_at=None)


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'collector.db'}"
    engine = db.create(url)
    db.prepare(engine)
    for report in (make_report(WEB, status=Status.DRIFTED, finished_at=BASE_TIME,
                               drift=(drift("nginx config"), drift("sysctl tune"), drift("motd"))),
                   make_report("db01.example.com", status=Status.IN_SYNC, finished_at=BASE_TIME, roles=("db",),
                               drift=())):
        store.ingest(engine, report, to_json(report).encode(), received_at=BASE_TIME + timedelta(seconds=1))
    engine.dispose()
    return url


def ids(url) -> dict[str, int]:
    engine = db.create(url)
    with engine.connect() as conn:
        found = {task: i for i, task in conn.execute(select(review_items.c.id, review_items.c.task))}
    engine.dispose()
    return found


def audit(url) -> list[tuple[str, str, str, str | None]]:
    engine = db.create(url)
    with engine.connect() as conn:
        rows = [(r.actor, r.actor_kind, r.action, r.reason) for r in conn.execute(select(review_audit))]
    engine.dispose()
    return rows


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def in_days(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%d")


def test_list_shows_current_items_as_text_and_json(url, capsys):
    code, out, _ = run(capsys, "drift", "list", "--db", url)
    assert code == 0 and "nginx config" in out and "3 of 3 item(s)" in out and out.count("open") == 3
    code, out, _ = run(capsys, "drift", "list", "--db", url, "--json", "--task", "motd")
    body = json.loads(out)
    assert body["total"] == 1 and body["items"][0]["task"] == "motd" and body["items"][0]["state"] == "open"
    code, out, _ = run(capsys, "drift", "list", "--db", url, "--json", "--state", "accepted")
    assert json.loads(out) == {"items": [], "total": 0}


def test_ack_records_the_unix_user_and_undo_reopens(url, capsys):
    item = ids(url)["nginx config"]
    code, out, err = run(capsys, "drift", "ack", str(item), "--reason", "on it", "--db", url)
    assert (code, err) == (0, "") and out.endswith("is acknowledged\n")
    code, out, _ = run(capsys, "drift", "ack", str(item), "--undo", "--reason", "wrong host", "--json", "--db", url)
    assert json.loads(out)["state"] == "open"
    assert audit(url) == [(USER, "cli", "acknowledge", "on it"), (USER, "cli", "unacknowledge", "wrong host")]


def test_accept_creates_the_exception_like_the_api(url, capsys):
    item = ids(url)["sysctl tune"]
    code, out, err = run(capsys, "drift", "accept", str(item), "--owner", "web team", "--reason", "vendor patch",
                         "--ticket", "OPS-7", "--expires", in_days(30), "--json", "--db", url)
    assert code == 0, err
    body = json.loads(out)
    assert (body["scope"], body["owner"], body["created_by"], body["items_covered"]) == ("item", "web team", USER, 1)
    code, out, _ = run(capsys, "drift", "accept", "--scope", "role", "--role", "nginx", "--host-pattern", "web*",
                       "--owner", "web team", "--reason", "all of nginx", "--ticket", "https://t.example/9",
                       "--expires", in_days(10), "--db", url)
    assert code == 0 and "covers 2 current item(s)" in out  # the two items not yet accepted
    assert [a[2] for a in audit(url)] == ["accept", "accept"]
    code, out, _ = run(capsys, "drift", "list", "--state", "accepted", "--json", "--db", url)
    assert json.loads(out)["total"] == 3


def test_revoke_reopens_the_items_and_is_audited(url, capsys):
    item = ids(url)["sysctl tune"]
    code, out, err = run(capsys, "drift", "accept", str(item), "--owner", "web team", "--reason", "vendor patch",
                         "--ticket", "OPS-7", "--expires", in_days(30), "--json", "--db", url)
    assert code == 0, err
    exc = json.loads(out)["id"]
    code, out, err = run(capsys, "drift", "revoke", str(exc), "--reason", "patched", "--json", "--db", url)
    assert code == 0, err
    body = json.loads(out)
    assert (body["id"], body["revoked_by"], body["owner"]) == (exc, USER, "web team")
    code, out, _ = run(capsys, "drift", "list", "--state", "accepted", "--json", "--db", url)
    assert json.loads(out)["total"] == 0
    assert [a[2:] for a in audit(url)] == [("accept", "vendor patch"), ("revoke", "patched")]
    code, _, err = run(capsys, "drift", "revoke", str(exc), "--reason", "again", "--db", url)
    assert code == 1 and err == f"gitops-collector: exception {exc} is already revoked\n"
    assert len(audit(url)) == 2


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["ack", "{item}", "--reason", "  "], 1, "--reason: required (say why)"),
    (["ack", "999", "--reason", "x"], 66, "drift item 999 does not exist"),
    (["revoke", "999", "--reason", "x"], 66, "exception 999 does not exist"),
    (["accept", "{item}", "--owner", "o", "--reason", "r", "--ticket", "T", "--expires", "2020-01-01"], 1,
     "--expires: must be in the future"),
    (["accept", "{item}", "--owner", "o", "--reason", "r", "--ticket", "T", "--expires", "{far}"], 1, "365"),
    (["accept", "{item}", "--owner", "o", "--reason", "r", "--ticket", "T", "--expires", "soon"], 1,
     "--expires: 'soon' is not a date"),
    (["accept", "{item}", "--owner", " ", "--reason", "r", "--ticket", "T", "--expires", "{soon}"], 1, "owner"),
    (["accept", "{item}", "--owner", "o", "--reason", "r", "--ticket", "", "--expires", "{soon}"], 1, "ticket"),
    (["accept", "--owner", "o", "--reason", "r", "--ticket", "T", "--expires", "{soon}"], 1,
     "ITEM_ID: scope item names the drift item"),
    (["accept", "--scope", "role", "--owner", "o", "--reason", "r", "--ticket", "T", "--expires", "{soon}"], 1,
     "--role: required for scope role"),
    (["accept", "{item}", "--scope", "task", "--host-pattern", "w*", "--host-group", "web", "--owner", "o",
      "--reason", "r", "--ticket", "T", "--expires", "{soon}"], 1,
     "--host-pattern/--host-group: a host selector takes a pattern or a group, not both"),
    (["accept", "{item}", "--scope", "task", "--host-pattern", "w*", "--owner", "o", "--reason", "r", "--ticket",
      "T", "--expires", "2026-12-01T00:00:00"], 1, "--expires: '2026-12-01T00:00:00' has no time zone"),
    (["accept", "{item}", "--host-pattern", "w*", "--owner", "o", "--reason", "r", "--ticket", "T", "--expires",
      "{soon}"], 1, "--host-pattern/--host-group: scope item names its host in its key"),
    # an unset shell variable (--host-pattern "$HOSTS"): read as no selector it was every host
    (["accept", "{item}", "--scope", "task", "--host-pattern", "", "--owner", "o", "--reason", "r", "--ticket", "T",
      "--expires", "{soon}"], 1, "--host-pattern: empty; leave it out"),
    (["export", "--from", "2026-11-22", "--to", "2026-11-19", "--out", "{out}"], 1, "--to: 2026-11-19T00:00:00.000Z is not after from"),
    (["export", "--from", "2026-11-19", "--scope", "host:nowhere", "--out", "{out}"], 66, "--scope: no host 'nowhere'"),
    (["export", "--from", "2026-11-19", "--scope", "rack:3", "--out", "{out}"], 1, "--scope: 'rack:3'"),
    (["export", "--from", "2026-11-19T00:00", "--out", "{out}"], 1, "--from: '2026-11-19T00:00' has no time zone"),
    (["export", "--from", "2026-11-19", "--key", "{missing}", "--out", "{out}"], 78, "cannot read it"),
    (["export", "--from", "2026-11-19", "--out", "{existing}"], 73, "cannot create it"),
])
def test_refusals_are_one_line_and_change_nothing(url, capsys, tmp_path, argv, code, message):
    (tmp_path / "existing.zip").write_bytes(b"keep me")
    values = {"item": str(ids(url)["nginx config"]), "far": in_days(400), "soon": in_days(5),
              "out": str(tmp_path / "e.zip"), "missing": str(tmp_path / "nokey"),
              "existing": str(tmp_path / "existing.zip")}
    got, out, err = run(capsys, "drift", *[a.format(**values) for a in argv], "--db", url)
    assert got == code, err
    assert err.startswith("gitops-collector: ") and err.count("\n") == 1 and message in err, err
    assert out == "" and audit(url) == [] and not (tmp_path / "e.zip").exists()
    assert (tmp_path / "existing.zip").read_bytes() == b"keep me"


@pytest.mark.parametrize("argv", [
    ["ack", "1"],  # no --reason
    ["ack", "one", "--reason", "x"],
    ["revoke", "1"],  # no --reason
    ["accept", "1", "--owner", "o", "--reason", "r", "--ticket", "T"],  # no --expires
    ["accept", "1", "--scope", "fleet", "--owner", "o", "--reason", "r", "--ticket", "T", "--expires", "x"],
    ["export", "--out", "x.zip"],  # no --from
    ["export", "--from", "2026-11-19", "--format", "xml", "--out", "x.zip"],
])
def test_bad_usage_exits_2(url, capsys, argv):
    assert main(["drift", *argv, "--db", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gitops-collector: drift {argv[0]}: ") and err.count("\n") == 1, err


def test_drift_without_an_action_is_still_the_http_query():
    args = _parser().parse_args(["drift", "--by-host", "--role", "web"])
    assert not drift_cli.is_action(args) and args.by_host and args.role == "web"


def test_export_writes_a_signed_bundle_that_ssh_keygen_verifies(url, capsys, tmp_path):
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    out = tmp_path / "evidence.zip"
    code, text, err = run(capsys, "drift", "export", "--from", "2026-11-19", "--to", "2026-11-21", "--scope",
                          f"host:{WEB}", "--format", "csv", "--key", str(key), "--out", str(out), "--json",
                          "--db", url)
    assert code == 0, err
    body = json.loads(text)
    assert body["signed"] and body["header"]["scope"] == f"host:{WEB}" and body["size_bytes"] == out.stat().st_size
    folder = tmp_path / "unpacked"
    zipfile.ZipFile(out).extractall(folder)
    assert len((folder / "runs.csv").read_text().splitlines()) == 2  # the header and web01's one run
    public = (folder / "evidence-key.pub").read_text().split()
    assert public == key.with_suffix(".pub").read_text().split()[:2]
    (folder / "allowed_signers").write_text(f'gitops-collector namespaces="gitops-evidence" {" ".join(public)}\n')
    with (folder / "SHA256SUMS").open("rb") as sums:
        done = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", "allowed_signers", "-I", "gitops-collector",
                               "-n", "gitops-evidence", "-s", "SHA256SUMS.sig"], stdin=sums, cwd=folder,
                              capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True).returncode == 0
