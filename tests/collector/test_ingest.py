"""POST /api/v1/reports: every status the issue names, and what lands in the database."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from agent.collector import tokens
from agent.collector.context import CollectorSettings
from agent.collector.tables import commits, drift_items, host_roles, hosts, runs
from agent.report import DriftKind, GateState, RolloutInfo, Status, WaveSize, to_dict, to_json
from tests.factory import BASE_TIME, COMMIT_B, drift_item, make_report


def count(engine, table, *where):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def test_new_report_is_201_and_stored_with_its_rows(send, engine):
    drift = (drift_item("a"), drift_item("b", kind=DriftKind.RECURRING))
    report = make_report(status=Status.DRIFTED, drift=drift)
    response = send(report)
    assert response.status_code == 201
    assert response.json() == {"run_id": report.run_id, "result": "created"}
    assert count(engine, runs) == 1
    assert count(engine, drift_items, drift_items.c.run_id == report.run_id) == 2
    assert count(engine, commits) == 1
    with engine.connect() as conn:
        host = conn.execute(select(hosts)).one()
        roles = conn.execute(select(host_roles.c.role)).scalars().all()
    assert (host.host, host.status, host.drift_count, host.last_run_id) == (
        report.host, "drifted", 2, report.run_id)
    assert host.due_at == BASE_TIME + timedelta(seconds=1800 + 300)
    assert roles == ["web"]


def test_same_run_id_again_is_200_and_changes_nothing(send, engine):
    report = make_report(status=Status.DRIFTED)
    assert send(report).status_code == 201
    again = send(report)
    assert again.status_code == 200
    assert again.json()["result"] == "duplicate"
    assert count(engine, runs) == 1
    assert count(engine, drift_items) == 1


def test_missing_or_unknown_token_is_401(client):
    body = to_json(make_report())
    assert client.post("/api/v1/reports", content=body).status_code == 401
    response = client.post("/api/v1/reports", content=body, headers={"Authorization": "Bearer gco_nope"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "token" in response.json()["error"]


def test_revoked_token_is_401(send, engine, token_for):
    secret = token_for("web01.example.com")
    tokens.revoke(engine, "web01.example.com", now=BASE_TIME)
    assert send(make_report(), token=secret).status_code == 401


def test_token_of_another_host_is_403(send, token_for):
    response = send(make_report("web01.example.com"), token=token_for("db01.example.com"))
    assert response.status_code == 403
    assert "db01.example.com" in response.json()["error"]


def test_reader_token_cannot_ingest(send, reader):
    secret = reader["Authorization"].split()[1]
    assert send(make_report(), token=secret).status_code == 403


@pytest.mark.parametrize("settings", [CollectorSettings(max_body_bytes=2000)])
def test_body_over_the_limit_is_413(send, engine):
    big = make_report(status=Status.DRIFTED, drift=(drift_item(diffs=3),))
    assert len(to_json(big)) > 2000
    response = send(big)
    assert response.status_code == 413
    assert count(engine, runs) == 0


@pytest.mark.parametrize("settings", [CollectorSettings(max_body_bytes=2000)])
def test_body_over_the_limit_without_content_length_is_413(client, token_for):
    async def chunks():
        for _ in range(10):
            yield b" " * 1000

    response = client.post("/api/v1/reports", content=chunks(),
                           headers={"Authorization": f"Bearer {token_for('web01.example.com')}"})
    assert response.status_code == 413


def test_invalid_json_is_422(client, token_for):
    response = client.post("/api/v1/reports", content=b"{not json",
                           headers={"Authorization": f"Bearer {token_for('web01.example.com')}"})
    assert response.status_code == 422
    assert "invalid JSON" in response.json()["error"]


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d["drift"][0].update(kind="sideways"), "drift[0].kind"),
    (lambda d: d.pop("run_id"), "run_id"),
    (lambda d: d.update(finished_at="yesterday"), "finished_at"),
    (lambda d: d["source"].update(ref=7), "source.ref"),
    (lambda d: d.update(schema_version=2), "schema_version"),
])
def test_schema_violation_is_422_naming_the_field(client, token_for, mutate, field):
    data = to_dict(make_report(status=Status.DRIFTED))
    mutate(data)
    response = client.post("/api/v1/reports", content=json.dumps(data),
                           headers={"Authorization": f"Bearer {token_for('web01.example.com')}"})
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert response.json()["error"].startswith(field)


def test_unknown_extra_fields_are_tolerated_and_kept(client, token_for, engine):
    report = make_report()
    data = {**to_dict(report), "from_the_future": {"x": 1}}
    response = client.post("/api/v1/reports", content=json.dumps(data),
                           headers={"Authorization": f"Bearer {token_for(report.host)}"})
    assert response.status_code == 201
    reader_token = tokens.create(engine, tokens.TokenKind.READER, "r", now=BASE_TIME)[1]
    run = client.get(f"/api/v1/runs/{report.run_id}", headers={"Authorization": f"Bearer {reader_token}"})
    assert run.json()["report"]["from_the_future"] == {"x": 1}


def test_an_older_report_arriving_late_does_not_replace_the_host_state(send, engine, clock):
    newer = make_report(status=Status.IN_SYNC, commit=COMMIT_B, finished_at=BASE_TIME)
    older = make_report(status=Status.DRIFTED, finished_at=BASE_TIME - timedelta(hours=1),
                        roles=("web", "old"))
    assert send(newer).status_code == 201
    clock.now = BASE_TIME + timedelta(minutes=5)
    assert send(older).status_code == 201
    with engine.connect() as conn:
        host = conn.execute(select(hosts)).one()
        roles = conn.execute(select(host_roles.c.role)).scalars().all()
    assert (host.status, host.commit, host.last_run_id) == ("in_sync", COMMIT_B, newer.run_id)
    assert host.last_seen_at == clock.now  # it did contact us, so it is not stale
    assert roles == ["web"]
    assert count(engine, runs) == 2


def test_paused_report_marks_the_host_paused(send, client, reader):
    from agent.report import Pause

    report = make_report(status=Status.PAUSED, pause=Pause(reason="maintenance", by="ops",
                                                           until=BASE_TIME + timedelta(hours=4)))
    assert send(report).status_code == 201
    host = client.get(f"/api/v1/hosts/{report.host}", headers=reader).json()
    assert host["paused"] is True
    assert host["pause_reason"] == "maintenance"
    assert host["pause_until"] == "2026-11-20T16:00:00.000Z"


def test_database_down_is_503_so_agents_retry(tmp_path):
    from agent.collector import db
    from agent.collector.app import create_app
    from agent.collector.context import Collector
    from tests.collector.conftest import ASGIClient
    from tests.live_collector import free_port

    engine = db.create(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    client = ASGIClient(create_app(Collector(engine, CollectorSettings())))
    try:
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "error"
        ingest = client.post("/api/v1/reports", content=to_json(make_report()),
                             headers={"Authorization": "Bearer gco_x"})
        assert ingest.status_code == 503
        assert ingest.json() == {"error": "database unavailable, retry later"}
    finally:
        client.close()
        engine.dispose()


@pytest.mark.parametrize(("change", "field"), [
    ({"host": "h" * 300}, "host"),
    ({"run_id": "r" * 65}, "run_id"),
    ({"drift": (drift_item("bad\x00task"),)}, "drift[0].task"),
    ({"roles": ("web", "x" * 256)}, "roles[1]"),
])
def test_values_that_cannot_be_stored_are_422_not_a_database_error(client, engine, change, field):
    report = make_report(status=Status.DRIFTED, **change)  # refused before the token's host is compared
    secret = tokens.create(engine, tokens.TokenKind.INGEST, "web01.example.com", now=BASE_TIME)[1]
    response = client.post("/api/v1/reports", content=to_json(report),
                           headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert count(engine, runs) == 0


def test_numbers_out_of_column_range_are_422(send):
    response = send(make_report(compacted=2**40))
    assert response.status_code == 422
    assert response.json()["field"] == "compacted"


def test_run_level_warnings_are_kept_and_shown(client, token_for, engine):
    warning = "vars_prompt 'release_note' was not answered (Ansible runs with no terminal) [D-no-terminal]"
    report = make_report(warnings=(warning,))
    response = client.post("/api/v1/reports", content=to_json(report),
                           headers={"Authorization": f"Bearer {token_for(report.host)}"})
    assert response.status_code == 201
    reader = {"Authorization": f"Bearer {tokens.create(engine, tokens.TokenKind.READER, 'r', now=BASE_TIME)[1]}"}
    assert client.get(f"/api/v1/runs/{report.run_id}", headers=reader).json()["report"]["warnings"] == [warning]
    page = client.get(f"/runs/{report.run_id}", headers=reader).text
    assert "<h2>Warnings</h2>" in page and "vars_prompt &#39;release_note&#39; was not answered" in page


def test_the_rollout_block_is_kept_and_served(client, token_for, engine):
    info = RolloutInfo(wave="early", gate=GateState.WAITING, policy_digest="d" * 64,
                       reason="waiting: wave canary 3/5 converged, needs 95%",
                       wave_sizes=(WaveSize("canary", 5), WaveSize("early", 50)), enforcing_commit=COMMIT_B)
    report = make_report(rollout=info)
    response = client.post("/api/v1/reports", content=to_json(report),
                           headers={"Authorization": f"Bearer {token_for(report.host)}"})
    assert response.status_code == 201
    reader = {"Authorization": f"Bearer {tokens.create(engine, tokens.TokenKind.READER, 'r', now=BASE_TIME)[1]}"}
    served = client.get(f"/api/v1/runs/{report.run_id}", headers=reader).json()["report"]["rollout"]
    assert served == to_dict(report)["rollout"]


def test_an_undecided_rollout_block_is_kept_and_served_and_counts_in_no_wave(client, token_for, engine):
    """A commit that failed before the gate (agent.cycle, docs/rollout.md): no wave, no policy digest; the
    report keeps what the host enforced instead, and no rollout_hosts row is made of it."""
    from agent.collector.tables import rollout_hosts
    from agent.report import Enforcement

    info = RolloutInfo(wave="", gate=GateState.UNDECIDED, policy_digest="",
                       reason="not decided: commit 9f8e7d6c5b4a failed at plan", enforcing_commit=COMMIT_B,
                       enforced=Enforcement(COMMIT_B, Status.CORRECTED, "corrected 1 drifted task(s)",
                                            drift=(drift_item(),)))
    report = make_report(status=Status.ERROR, rollout=info)
    response = client.post("/api/v1/reports", content=to_json(report),
                           headers={"Authorization": f"Bearer {token_for(report.host)}"})
    assert response.status_code == 201
    reader = {"Authorization": f"Bearer {tokens.create(engine, tokens.TokenKind.READER, 'r', now=BASE_TIME)[1]}"}
    served = client.get(f"/api/v1/runs/{report.run_id}", headers=reader).json()["report"]["rollout"]
    assert served == to_dict(report)["rollout"] and served["gate"] == "undecided"
    assert count(engine, rollout_hosts) == 0
