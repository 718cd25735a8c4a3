"""Issue 15 on the ingest and query API, each case on SQLite and PostgreSQL: times from clocks ahead
(or never set), run_id conflicts, host names that cannot be a URL segment, and the inputs that were a 500
(non-UTF-8 bodies, extreme numbers and times, Unicode digits in query parameters)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from agent.collector import db, store, tokens
from agent.collector.cli import main
from agent.collector.errors import BadRequestError
from agent.collector.tables import commits, drift_items, hosts, runs
from agent.collector.tokens import TokenKind
from agent.report import Pause, Status, to_dict, to_json
from tests.collector.hostile import (
    BAD_HOST_NAMES,
    ENCODINGS,
    EXTREME_NUMBERS,
    EXTREME_TIMES,
    GOOD_HOST_NAMES,
    UNICODE_DIGITS,
)
from tests.factory import BASE_TIME, COMMIT_B, make_report

HOST = "web01.example.com"
FUTURE = datetime(2099, 1, 1, tzinfo=UTC)


def host_row(engine, name=HOST):
    with engine.connect() as conn:
        return conn.execute(select(hosts).where(hosts.c.host == name)).one()


def post_raw(client, token_for, body: bytes, host=HOST):
    return client.post("/api/v1/reports", content=body, headers={"Authorization": f"Bearer {token_for(host)}"})


# --- times from the hosts' clocks -------------------------------------------------------------------


def test_a_report_from_the_future_does_not_freeze_its_host(send, engine, clock, client, reader):
    future = make_report(HOST, status=Status.FAILED, finished_at=FUTURE)
    assert send(future).status_code == 201
    row = host_row(engine)
    assert (row.status, row.last_finished_at) == ("failed", BASE_TIME)  # stored as the receive time
    clock.now = BASE_TIME + timedelta(minutes=30)
    fixed = make_report(HOST, status=Status.IN_SYNC, commit=COMMIT_B, finished_at=clock.now)
    assert send(fixed).status_code == 201
    row = host_row(engine)
    assert (row.status, row.commit, row.last_run_id) == ("in_sync", COMMIT_B, fixed.run_id)
    runs_listed = client.get(f"/api/v1/hosts/{HOST}/runs", headers=reader).json()["items"]
    assert [r["run_id"] for r in runs_listed] == [fixed.run_id, future.run_id]  # newest first, by arrival
    served = client.get(f"/api/v1/runs/{future.run_id}", headers=reader).json()
    assert served["report"]["finished_at"] == "2099-01-01T00:00:00.000Z"  # the report is kept as sent
    assert served["finished_at"] == "2026-11-20T12:00:00.000Z"
    metrics = client.get("/metrics", headers=reader).text
    assert "gitops_reports_clock_ahead_total 1" in metrics


def test_every_time_that_orders_or_ages_is_clamped_and_pause_until_is_kept(send, engine, clock, client,
                                                                          reader):
    ahead = BASE_TIME + timedelta(days=3)
    report = make_report(HOST, status=Status.DRIFTED, finished_at=ahead, started_at=ahead,
                         pause=Pause("maintenance", since=ahead, until=FUTURE))
    report = replace(report, source=replace(report.source, committed_at=ahead),
                     drift=tuple(replace(i, first_seen_at=ahead) for i in report.drift))
    assert send(report).status_code == 201
    with engine.connect() as conn:
        run = conn.execute(select(runs)).one()
        item = conn.execute(select(drift_items)).one()
        commit = conn.execute(select(commits)).one()
    assert (run.started_at, run.finished_at, run.received_at) == (BASE_TIME, BASE_TIME, BASE_TIME)
    assert item.first_seen_at == BASE_TIME and commit.committed_at == BASE_TIME
    row = host_row(engine)
    assert row.pause_until == FUTURE  # an expiry the operator chose, not a clock reading
    drift = client.get("/api/v1/drift", headers=reader).json()["items"]
    assert drift[0]["first_seen_at"] == "2026-11-20T12:00:00.000Z"


def test_a_clock_slightly_behind_is_kept_as_sent(send, engine):
    earlier = BASE_TIME - timedelta(seconds=3)
    assert send(make_report(HOST, finished_at=earlier)).status_code == 201
    assert host_row(engine).last_finished_at == earlier


def test_run_times_from_a_clock_never_set_are_422(client, token_for, engine):
    for field in ("finished_at", "started_at"):
        for when in ("1970-01-01T00:00:00Z", "1999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"):
            data = to_dict(make_report(HOST))
            data[field] = when
            response = post_raw(client, token_for, json.dumps(data).encode())
            assert response.status_code == 422, (field, when, response.text)
            assert response.json()["field"] == field and "is the host's clock set?" in response.json()["error"]


def with_value(data, path, value):
    """`data` with the value at `path` (keys and list indexes) replaced."""
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return data


TIME_PATHS = [("finished_at",), ("started_at",), ("source", "committed_at"), ("drift", 0, "first_seen_at"),
              ("pause", "until"), ("pause", "since")]


def test_extreme_times_anywhere_are_a_clear_answer_never_a_500(client, token_for, engine):
    answers = set()
    for path in TIME_PATHS:
        for when in EXTREME_TIMES:
            data = to_dict(make_report(HOST, status=Status.DRIFTED, pause=Pause("x", since=BASE_TIME)))
            response = post_raw(client, token_for, json.dumps(with_value(data, path, when)).encode())
            answers.add(response.status_code)
            assert response.status_code in (201, 422), (path, when, response.status_code, response.text)
            if response.status_code == 422:
                assert "\n" not in response.json()["error"]
            else:
                assert host_row(engine).last_finished_at <= BASE_TIME, (path, when)  # never ahead
    assert answers == {201, 422}


def test_migration_0005_unfreezes_hosts_stored_before_the_clock_rule(db_url):
    engine = db.create(db_url)
    try:
        db.migrate(engine, "0004")
        frozen = make_report(HOST, status=Status.FAILED, finished_at=FUTURE)
        with db.write(engine) as conn:  # what an older collector stored: the 2099 time as sent
            conn.execute(runs.insert(), store._run_row(frozen, to_json(frozen).encode(), BASE_TIME))
            store._upsert_host(conn, frozen, BASE_TIME, store.Expectations())
        db.migrate(engine)
        assert host_row(engine).last_finished_at == BASE_TIME
        later = make_report(HOST, finished_at=BASE_TIME + timedelta(minutes=5))
        store.ingest(engine, later, to_json(later).encode(), received_at=BASE_TIME + timedelta(minutes=5))
        assert (host_row(engine).status, host_row(engine).last_run_id) == ("in_sync", later.run_id)
    finally:
        engine.dispose()


# --- run_id conflicts ------------------------------------------------------------------------------------


def test_same_run_id_with_another_body_is_409_and_the_first_is_kept(send, engine, client, reader, token_for):
    first = make_report(HOST, status=Status.DRIFTED)
    assert send(first).status_code == 201
    other = replace(first, status=Status.FAILED)
    response = send(other)
    assert response.status_code == 409
    error = response.json()["error"]
    assert first.run_id in error and "status" in error and "stored one is kept" in error
    assert client.get(f"/api/v1/runs/{first.run_id}", headers=reader).json()["status"] == "drifted"
    # the same report in other JSON spelling (key order, spacing) is the same report: 200
    respelled = json.dumps(to_dict(first), indent=3, sort_keys=True).encode()
    assert post_raw(client, token_for, respelled).status_code == 200


def test_a_run_id_of_another_host_is_409_without_naming_it(send, engine):
    first = make_report("db01.example.com")
    assert send(first).status_code == 201
    thief = replace(make_report(HOST), run_id=first.run_id)
    response = send(thief)
    assert response.status_code == 409
    assert "another host" in response.json()["error"] and "db01" not in response.json()["error"]
    with engine.connect() as conn:
        assert conn.execute(select(runs.c.host)).scalars().all() == ["db01.example.com"]
    assert host_row(engine, "db01.example.com").last_run_id == first.run_id


# --- host names --------------------------------------------------------------------------------------------


def test_host_names_that_are_not_one_url_segment_are_refused_at_token_creation_and_ingest(
        engine, client, token_for):
    for name in BAD_HOST_NAMES:
        with pytest.raises(BadRequestError, match=r"host name|1 to 255"):
            tokens.create(engine, TokenKind.INGEST, name, now=BASE_TIME)
        response = client.post("/api/v1/reports", content=to_json(make_report(name)),
                               headers={"Authorization": f"Bearer {token_for(HOST)}"})
        assert response.status_code == 422, (name, response.text)
        assert response.json()["field"] == "host"
        assert name == "" or "letters, digits" in response.json()["error"] or len(name) > 253


def test_accepted_host_names_are_reachable_in_the_api_and_ui(send, client, reader):
    for name in GOOD_HOST_NAMES:
        report = make_report(name, status=Status.DRIFTED)
        assert send(report).status_code == 201, name
        assert client.get(f"/api/v1/hosts/{name}", headers=reader).json()["host"] == name
        assert client.get(f"/api/v1/hosts/{name}/runs", headers=reader).json()["items"][0]["host"] == name
        page = client.get(f"/hosts/{name}", headers=reader)
        assert page.status_code == 200 and name in page.text, name


def test_token_create_says_the_rule(db_url, engine, capsys):
    assert main(["token", "create", "x/runs", "--db", db_url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gitops-collector: host name: 'x/runs' is not a host name (1 to 253 characters")
    assert err.count("\n") == 1


def test_reader_names_keep_their_freedom(engine):
    info, _ = tokens.create(engine, TokenKind.READER, "Alice Example / ops", now=BASE_TIME)
    assert info.name == "Alice Example / ops"  # a person's name is never part of a URL


# --- inputs that were a 500 --------------------------------------------------------------------------------


def test_a_body_not_in_utf8_is_422(client, token_for, engine):
    text = to_json(make_report(HOST)).replace('"drift": []', '"drift": [], "note": "café ünïcode"')
    deep = text[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}"  # the RecursionError shape
    for encoding in ENCODINGS:
        for body in (text.encode(encoding), deep.encode(encoding)):
            response = post_raw(client, token_for, body)
            assert response.status_code == 422, (encoding, response.text)
            error = response.json()["error"]
            assert "UTF-8" in error and "\n" not in error, error
    with engine.connect() as conn:
        assert conn.execute(select(runs)).first() is None


NUMBER_PATHS = [("durations_s", "total"), ("stats", "ok"), ("interval_s",), ("compacted",), ("apply", "changed"),
                ("extra_field",)]


def test_extreme_numbers_anywhere_are_a_clear_answer_never_a_500(client, token_for):
    answers = set()
    for path in NUMBER_PATHS:
        for number in EXTREME_NUMBERS:
            data = with_value(to_dict(make_report(HOST, status=Status.DRIFTED)), path, "@@NUMBER@@")
            body = json.dumps(data).replace('"@@NUMBER@@"', number).encode()
            response = post_raw(client, token_for, body)
            answers.add(response.status_code)
            assert response.status_code in (201, 422), (path, number[:20], response.status_code)
            if response.status_code == 422:
                assert "\n" not in response.json()["error"] and len(response.json()["error"]) < 300
    assert answers == {201, 422}


def test_a_400_digit_total_is_422_out_of_range(client, token_for):
    data = to_dict(make_report(HOST))
    body = json.dumps(data).replace('"total": 42.0', '"total": ' + "9" * 400).encode()
    response = post_raw(client, token_for, body)
    assert response.status_code == 422 and "out of range" in response.json()["error"]


NUMBER_PARAMETERS = ["/api/v1/hosts?limit={}", "/api/v1/hosts?offset={}", "/api/v1/drift?limit={}",
                     f"/api/v1/hosts/{HOST}/runs?limit={{}}", "/api/v1/webhooks?offset={}",
                     f"/api/v1/commits/{COMMIT_B[:8]}?limit={{}}", "/?limit={}", "/drift?offset={}",
                     "/webhooks?limit={}", "/stale?offset={}"]


def test_unicode_digits_and_huge_numbers_in_parameters_are_400(client, reader, send):
    assert send(make_report(HOST, commit=COMMIT_B)).status_code == 201
    for path in NUMBER_PARAMETERS:
        for value in UNICODE_DIGITS:
            response = client.get(path.format(value), headers=reader)
            assert response.status_code == 400, (path, value[:20], response.status_code)
        assert client.get(path.format("7"), headers=reader).status_code == 200, path


def test_a_content_length_that_is_not_a_number_is_a_4xx(client, token_for):
    body = to_json(make_report(HOST)).encode()
    for declared in ("²", "٣", "-1", "9" * 5000, "1e3"):
        response = client.post("/api/v1/reports", content=body,
                               headers={"Authorization": f"Bearer {token_for(HOST)}",
                                        "Content-Length": declared.encode()})
        assert response.status_code in (400, 413), (declared[:20], response.text)
