"""The evidence export for auditors through the app (docs/drift-review.md section 7): every type of record in
the bundle, scopes, the CSV twin, the printable summary, who may export and every refusal, and the
detached signature checked with the real `ssh-keygen -Y verify` and `sha256sum -c`.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest

from agent.collector import db, evidence
from agent.collector.app import create_app
from agent.collector.context import Collector, CollectorSettings
from agent.collector.errors import CollectorError
from agent.collector.tables import rollout_actions, rollout_approvals
from agent.report import DriftItem, DriftKind, Status
from tests.collector.conftest import ASGIClient
from tests.factory import BASE_TIME, COMMIT_A, COMMIT_B, make_report

WEB, DB = "web01.example.com", "db01.example.com"
RANGE = "from=2026-11-19&to=2026-11-22"


def drift(task: str, role: str = "web", kind: DriftKind = DriftKind.CORRECTIVE) -> DriftItem:
    return DriftItem(play=f"{role} servers", task=task, role=role, module="ansible.builtin.template",
                     kind=kind, ansible_role=role, task_path=f"roles/{role}/tasks/main.yml:3",
                     first_seen_at=None)


def at(minutes: int):
    return BASE_TIME + timedelta(minutes=minutes)


@pytest.fixture
def reviewer(engine) -> dict[str, str]:
    from agent.collector import tokens
    from agent.collector.tokens import TokenKind
    secret = tokens.create(engine, TokenKind.REVIEWER, "rita", now=BASE_TIME)[1]
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def fleet(client, send, reviewer, clock, engine):
    """Two hosts in two roles: web01 drifts on two tasks (one acknowledged, one accepted), then corrects
    one; db01 runs another commit; a rollout approval and a halt for each commit; one run outside the range."""
    clock.now = at(1)
    assert send(make_report(WEB, status=Status.DRIFTED, finished_at=at(0), roles=("web",),
                            drift=(drift("nginx config"), drift("sysctl tune")))).status_code == 201
    assert send(make_report(DB, status=Status.IN_SYNC, finished_at=at(0), roles=("db",), commit=COMMIT_B,
                            drift=())).status_code == 201
    assert send(make_report(WEB, status=Status.IN_SYNC, finished_at=at(-3 * 1440), roles=("web",),
                            drift=())).status_code == 201  # before the range
    items = {i["task"]: i["id"] for i in client.get("/api/v1/drift?group=host", headers=reviewer).json()["items"]}
    clock.now = at(2)
    assert client.post(f"/api/v1/drift/items/{items['nginx config']}/ack", headers=reviewer,
                       json={"reason": "on it"}).status_code == 200
    accepted = client.post("/api/v1/drift/exceptions", headers=reviewer, json={
        "scope": "item", "item_id": items["sysctl tune"], "owner": "web team", "reason": "vendor patch",
        "ticket": "OPS-7", "expires_at": "2026-12-20"})
    assert accepted.status_code == 201, accepted.text
    clock.now = at(11)
    assert send(make_report(WEB, status=Status.CORRECTED, finished_at=at(10), roles=("web",),
                            drift=(drift("nginx config"), drift("sysctl tune", kind=DriftKind.RECURRING)))
            ).status_code == 201
    with db.write(engine) as conn:
        for commit in (COMMIT_A, COMMIT_B):
            conn.execute(rollout_approvals.insert().values(commit=commit, plan_digest="d" * 64, actor="olga",
                                                           at=at(3), reason="plan reviewed"))
            conn.execute(rollout_actions.insert().values(commit=commit, action="halt", wave=None, actor="olga",
                                                         at=at(4), reason="wait"))
    clock.now = at(20)
    return items


def bundle(client, headers, query: str) -> zipfile.ZipFile:
    response = client.get(f"/api/v1/evidence?{query}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"].startswith('attachment; filename="evidence-')
    return zipfile.ZipFile(io.BytesIO(response.content))


def jsonl(archive: zipfile.ZipFile) -> list[dict]:
    return [json.loads(line) for line in archive.read("evidence.jsonl").decode().splitlines()]


def test_jsonl_bundle_holds_every_type_with_lifecycle(client, reader, fleet):
    archive = bundle(client, reader, f"{RANGE}&format=jsonl")
    assert sorted(archive.namelist()) == ["SHA256SUMS", "evidence.jsonl"]  # no key: no signature
    lines = jsonl(archive)
    head, tail = lines[0], lines[-1]
    assert head["type"] == "header" and head["scope"] == "fleet" and head["from"] == "2026-11-19T00:00:00.000Z"
    by_type: dict[str, list[dict]] = {}
    for record in lines[1:-1]:
        by_type.setdefault(record["type"], []).append(record)
    assert tail == {"type": "trailer", "counts": {k: len(by_type.get(k, [])) for k in evidence.TYPES}}
    assert len(by_type["run"]) == 3  # the run three days before the range is not in it
    assert [r["finished_at"] for r in by_type["run"]] == sorted(r["finished_at"] for r in by_type["run"])
    items = {i["task"]: i for i in by_type["drift_item"]}
    assert items["nginx config"]["state"] == "resolved" and items["nginx config"]["resolution"] == "corrected"
    assert items["nginx config"]["acknowledged_by"] == "rita"
    assert items["sysctl tune"]["state"] == "accepted" and items["sysctl tune"]["accepted_by"] == 1
    assert isinstance(items["sysctl tune"]["kinds"], list) and items["sysctl tune"]["commits"] == [COMMIT_A]
    assert [(e["owner"], e["ticket"], e["created_by"]) for e in by_type["exception"]] == [("web team", "OPS-7", "rita")]
    assert {a["commit"] for a in by_type["approval"]} == {COMMIT_A, COMMIT_B}
    assert {a["action"] for a in by_type["rollout_action"]} == {"halt"}
    assert [(a["action"], a["actor"]) for a in by_type["review_action"]] == [("acknowledge", "rita"), ("accept", "rita")]
    assert {(c["sha"], c["signature_status"], c["signer"]) for c in by_type["commit"]} == {
        (COMMIT_A, "verified", "ops@example.com"), (COMMIT_B, "verified", "ops@example.com")}
    digest = archive.read("SHA256SUMS").decode().split()
    import hashlib
    assert digest == [hashlib.sha256(archive.read("evidence.jsonl")).hexdigest(), "evidence.jsonl"]


def test_scopes_keep_only_their_hosts_and_roles(client, reader, fleet):
    host = jsonl(bundle(client, reader, f"{RANGE}&scope=host:{DB}"))
    kinds = {r["type"] for r in host}
    assert {r["host"] for r in host if r["type"] == "run"} == {DB}
    assert "drift_item" not in kinds and "exception" not in kinds and "review_action" not in kinds
    assert [c["sha"] for c in host if c["type"] == "commit"] == [COMMIT_B]
    assert [a["commit"] for a in host if a["type"] == "approval"] == [COMMIT_B]
    role = jsonl(bundle(client, reader, f"{RANGE}&scope=role:web"))
    assert {r["host"] for r in role if r["type"] == "run"} == {WEB}
    assert len([r for r in role if r["type"] == "drift_item"]) == 2
    assert [r["action"] for r in role if r["type"] == "review_action"] == ["acknowledge", "accept"]
    assert len([r for r in role if r["type"] == "exception"]) == 1
    for records in (host, role):  # approvals and actions: the commits the scope's hosts ran, and only those
        assert [a["commit"] for a in records if a["type"] == "rollout_action"] == [
            COMMIT_B if records is host else COMMIT_A]
    assert [c["sha"] for c in role if c["type"] == "commit"] == [COMMIT_A]
    assert [a["commit"] for a in role if a["type"] == "approval"] == [COMMIT_A]


def test_a_scoped_export_keeps_the_approvals_of_a_commit_whose_runs_were_pruned(client, reader, send, fleet,
                                                                                 engine):
    """An approval is about a commit a host in scope ever ran (host_commits), kept when prune deletes the
    runs: web01's run of COMMIT_B, two days old, is pruned."""
    from agent.collector import store

    assert send(make_report(WEB, status=Status.IN_SYNC, finished_at=at(-2 * 1440), roles=("web",),
                            commit=COMMIT_B, drift=())).status_code == 201
    assert store.prune(engine, older_than=at(-1440)) == 2  # that run, and the one three days old
    role = jsonl(bundle(client, reader, f"{RANGE}&scope=role:web"))
    assert sorted(a["commit"] for a in role if a["type"] == "approval") == sorted([COMMIT_A, COMMIT_B])
    assert [c["sha"] for c in role if c["type"] == "commit"] == [COMMIT_A]  # commits: runs in the window only


def test_csv_bundle_has_one_file_per_type(client, reviewer, fleet):
    archive = bundle(client, reviewer, f"{RANGE}&format=csv")
    names = set(archive.namelist())
    assert names == {*evidence.CSV_NAMES.values(), "header.json", "trailer.json", "SHA256SUMS"}
    counts = json.loads(archive.read("trailer.json"))["counts"]
    for kind, name in evidence.CSV_NAMES.items():
        rows = list(csv.DictReader(io.StringIO(archive.read(name).decode())))
        assert len(rows) == counts[kind], name
        assert tuple(csv.reader(io.StringIO(archive.read(name).decode())).__next__()) == evidence.COLUMNS[kind]
    items = list(csv.DictReader(io.StringIO(archive.read("drift_items.csv").decode())))
    assert json.loads(items[0]["commits"]) == [COMMIT_A]
    assert counts["run"] == 3 and counts["commit"] == 2


def test_summary_counts_the_same_records(client, reader, fleet):
    summary = client.get(f"/api/v1/evidence?{RANGE}&format=summary", headers=reader).json()
    assert (summary["runs"], summary["drift_items"], summary["review_actions"], summary["approvals"]) == (3, 2, 2, 2)
    assert summary["items_by_state"] == {"accepted": 1, "resolved": 1}
    assert summary["runs_by_status"] == {"corrected": 1, "drifted": 1, "in_sync": 1}
    page = client.get(f"/drift/evidence?{RANGE}", headers=reader)
    assert page.status_code == 200 and "vendor patch" in page.text and "OPS-7" in page.text
    assert "/drift/evidence/export?" in page.text and "no signing key" in page.text


@pytest.mark.parametrize(("query", "status", "message"), [
    ("to=2026-11-22", 400, "from: required"),
    ("from=2026-11-22&to=2026-11-19", 400, "is not after from"),
    ("from=2026-11-22&to=2026-11-22", 400, "is not after from"),
    ("from=yesterday", 400, "from: 'yesterday' is not a date"),
    ("from=2026-11-19&to=2026-13-01", 400, "to: '2026-13-01' is not a date"),
    (f"{RANGE}&scope=team:ops", 400, "scope: 'team:ops' is not fleet"),
    (f"{RANGE}&scope=host:", 400, "scope: 'host:' is not fleet"),
    (f"{RANGE}&scope=host:nowhere.example.com", 404, "no host 'nowhere.example.com'"),
    (f"{RANGE}&scope=role:nothing", 404, "no role 'nothing'"),
    (f"{RANGE}&format=xml", 400, "format: expected"),
    # a time without a zone would move the range by hours: refused, saying so (also for the CLI's --from)
    ("from=2026-11-19T00:00:00", 400, "from: '2026-11-19T00:00:00' has no time zone: add Z"),
    ("from=2026-11-19&to=2026-11-22T12:00", 400, "to: '2026-11-22T12:00' has no time zone"),
    # which of two was meant cannot be told: each parameter that defines the export is taken once
    ("from=2026-11-19&from=2026-11-20", 400, "from: given 2 times; give it once"),
    (f"{RANGE}&to=2026-11-23", 400, "to: given 2 times"),
    (f"{RANGE}&scope=fleet&scope=host:nowhere.example.com", 400, "scope: given 2 times"),
    (f"{RANGE}&format=csv&format=jsonl", 400, "format: given 2 times"),
])
def test_bad_requests_are_refused_with_one_line(client, reader, fleet, query, status, message):
    response = client.get(f"/api/v1/evidence?{query}", headers=reader)
    assert response.status_code == status, response.text
    assert message in response.json()["error"] and "\n" not in response.json()["error"]


def test_readers_and_reviewers_may_export_ingest_tokens_and_strangers_not(client, reader, reviewer, token_for,
                                                                         fleet):
    assert client.get(f"/api/v1/evidence?{RANGE}", headers=reader).status_code == 200
    assert client.get(f"/api/v1/evidence?{RANGE}", headers=reviewer).status_code == 200
    ingest = {"Authorization": f"Bearer {token_for(WEB)}"}
    assert client.get(f"/api/v1/evidence?{RANGE}", headers=ingest).status_code == 403
    assert client.get(f"/api/v1/evidence?{RANGE}").status_code == 401
    assert client.get("/api/v1/evidence/key", headers=reader).status_code == 404  # no key configured
    assert client.get(f"/drift/evidence/export?{RANGE}").status_code in (302, 303)  # the page: sign in first


# -- the signature ------------------------------------------------------------------------------------


def make_key(tmp_path: Path, *extra: str) -> Path:
    path = tmp_path / "evidence_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "collector", "-f", str(path), *extra],
                   check=True)
    return path


@pytest.fixture
def signing(engine, clock, tmp_path):
    """A second app on the same database whose collector has a signing key."""
    settings = CollectorSettings(evidence_key=evidence.load_key(make_key(tmp_path)))
    c = ASGIClient(create_app(Collector(engine, settings, now=clock)))
    yield c
    c.close()


def verify(folder: Path, signers: str) -> subprocess.CompletedProcess[str]:
    (folder / "allowed_signers").write_text(signers)
    with (folder / "SHA256SUMS").open("rb") as sums:
        return subprocess.run(["ssh-keygen", "-Y", "verify", "-f", "allowed_signers", "-I", "gitops-collector",
                               "-n", "gitops-evidence", "-s", "SHA256SUMS.sig"], stdin=sums, cwd=folder,
                              capture_output=True, text=True)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_signature_verifies_offline_with_ssh_keygen_and_sha256sum(signing, reader, fleet, tmp_path, fmt):
    client = signing
    signers = client.get("/api/v1/evidence/key", headers=reader)
    assert signers.status_code == 200 and signers.text.startswith('gitops-collector namespaces="gitops-evidence" ssh-ed25519 ')
    archive = bundle(client, reader, f"{RANGE}&format={fmt}&scope=role:web")
    folder = tmp_path / f"unpacked-{fmt}"
    archive.extractall(folder)
    assert (folder / "evidence-key.pub").read_text().split() == signers.text.split()[2:4]
    done = verify(folder, signers.text)
    assert done.returncode == 0, done.stderr
    assert 'Good "gitops-evidence" signature for gitops-collector' in done.stdout + done.stderr
    checked = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
    # an altered data file fails sha256sum; an altered SHA256SUMS fails the signature
    data = folder / ("evidence.jsonl" if fmt == "jsonl" else "runs.csv")
    data.write_text(data.read_text().replace(WEB, "web99.example.com"))
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True).returncode != 0
    sums = folder / "SHA256SUMS"
    sums.write_text(sums.read_text().replace(sums.read_text()[:8], "00000000"))
    assert verify(folder, signers.text).returncode != 0


def test_bad_signing_keys_are_refused_with_one_line(tmp_path):
    key = make_key(tmp_path)
    key.chmod(0o644)
    with pytest.raises(CollectorError, match=r"permissions 0644 let others read the private key \(chmod 600"):
        evidence.load_key(key)
    with pytest.raises(CollectorError, match="cannot read it"):
        evidence.load_key(tmp_path / "missing")
    locked = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-phrase", "-f", str(locked)], check=True)
    with pytest.raises(CollectorError, match="not an OpenSSH private key without passphrase"):
        evidence.load_key(locked)
    junk = tmp_path / "junk"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    with pytest.raises(CollectorError, match="not an OpenSSH private key without passphrase"):
        evidence.load_key(junk)


def test_keyset_pages_cover_every_row_once_across_ties_and_filtered_batches(engine, monkeypatch):
    """Small batches: runs sharing a finish time straddle batch ends (the key is (finished_at, run_id)), and
    host-scoped review actions are kept from batches mostly of the other host (a short filtered batch must
    not end the export)."""
    from agent.collector import review_store, store
    from agent.report import to_json
    monkeypatch.setattr(evidence, "BATCH", 4)
    tasks: list[DriftItem] = []  # web01 keeps drifting on every task it drifted on before
    for n in range(11):
        host = WEB if n % 3 else DB
        if host == WEB:
            tasks.append(drift(f"task {n}"))
        report = make_report(host, status=Status.DRIFTED, finished_at=at(n // 4),
                             drift=tuple(tasks) if host == WEB else (drift("db task", "db"),))
        store.ingest(engine, report, to_json(report).encode(), received_at=at(5))
    with engine.connect() as conn:
        from sqlalchemy import select

        from agent.collector.tables import review_items
        items = [(i, h) for i, h in conn.execute(select(review_items.c.id, review_items.c.host))]
    actor = review_store.Actor("rita", "token")
    (other,) = [i for i, h in items if h == DB]
    for item_id in [i for i, h in items if h == WEB]:  # interleaved with actions on db01's item
        review_store.acknowledge(engine, item_id, actor=actor, reason="seen", now=at(6))
        review_store.acknowledge(engine, other, actor=actor, reason="db", now=at(6))
        review_store.unacknowledge_item(engine, other, actor=actor, reason="db", now=at(6))
    req = evidence.parse_request("2026-11-20", "2026-11-21", None, now=at(10))
    runs = [r for kind, r in evidence.records(engine, req) if kind == "run"]
    assert len(runs) == len({r["run_id"] for r in runs}) == 11
    assert [(r["finished_at"], r["run_id"]) for r in runs] == sorted((r["finished_at"], r["run_id"]) for r in runs)
    scoped = evidence.parse_request("2026-11-20", "2026-11-21", f"host:{WEB}", now=at(10))
    actions = [r for kind, r in evidence.records(engine, scoped) if kind == "review_action"]
    assert [a["reason"] for a in actions] == ["seen"] * 7  # web01's only, from batches mostly db01's
    chunks = list(evidence.bundle_chunks(engine, req, "jsonl", None))
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert json.loads(archive.read("evidence.jsonl").splitlines()[-1])["counts"]["run"] == 11
