"""Property tests: hostile JSON against the real ingest endpoint (in-process app, SQLite).

Whatever the body, the answer is never a 5xx; afterwards the database holds exactly the reports that were
answered 2xx, and each stored body decodes as a valid v1 report that the query API serves back.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from agent.collector import db, tokens
from agent.collector.app import Collector, CollectorSettings, create_app
from agent.collector.payload import PayloadLimits, parse_report
from agent.collector.store import decompress
from agent.collector.tables import runs
from agent.collector.tokens import TokenKind
from agent.report import DriftKind, Status, to_dict
from tests.collector.conftest import ASGIClient
from tests.factory import BASE_TIME, drift_item, make_report

HOST = "fuzz.example.com"
LIMITS = PayloadLimits(max_depth=8, max_string_chars=4000, max_key_chars=40)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Text including lone surrogates, control characters and NUL (json.dumps escapes them all).
TEXT = st.text(st.characters(codec=None, categories=None) | st.characters(min_codepoint=0xD800,
                                                                          max_codepoint=0xDFFF),
               max_size=40)
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | TEXT
           | st.sampled_from(["2026-11-20T12:00:00Z", "in_sync", "drifted", "corrective", "a" * 40, ""]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found += _paths(child, (*prefix, key))
    return found


def _base(run: int) -> dict[str, Any]:
    report = make_report(HOST, status=Status.DRIFTED, run_id=f"fuzz-{run}",
                         drift=(drift_item(), drift_item("motd", kind=DriftKind.RECURRING)))
    return to_dict(report)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    data = _base(draw(st.integers(0, 10**6)))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_paths(data)))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON)
    text = json.dumps(data, allow_nan=True, ensure_ascii=draw(st.booleans()))
    raw = draw(st.sampled_from(["as_is", "deep", "duplicate", "truncate", "long", "bytes"]))
    if raw == "deep":
        depth = draw(st.integers(1, 3000))
        text = text[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    elif raw == "duplicate":
        text = text[:-1] + ', "host": ' + json.dumps(draw(TEXT)) + "}"
    elif raw == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif raw == "long":
        text = text[:-1] + ', "x": "' + "y" * draw(st.integers(3990, 4010)) + '"}'
    body = text.encode("utf-8", "surrogatepass")
    if raw == "bytes":
        body = body[:-1] + draw(st.binary(max_size=8)) + b"}"
    return body


def _app(tmp_path: Any) -> tuple[ASGIClient, Any, dict[str, str], dict[str, str]]:
    engine = db.create(f"sqlite:///{tmp_path / 'fuzz.db'}")
    db.prepare(engine)
    ingest = tokens.create(engine, TokenKind.INGEST, HOST, now=BASE_TIME)[1]
    reader = tokens.create(engine, TokenKind.READER, "fuzzer", now=BASE_TIME)[1]
    settings_ = CollectorSettings(max_body_bytes=64 * 1024, payload=LIMITS)
    client = ASGIClient(create_app(Collector(engine, settings_, now=lambda: BASE_TIME)))
    return client, engine, {"Authorization": f"Bearer {ingest}"}, {"Authorization": f"Bearer {reader}"}


def test_hostile_reports_never_get_a_5xx_and_only_accepted_ones_are_stored(tmp_path):
    client, engine, ingest, reader = _app(tmp_path)
    accepted: set[str] = set()
    statuses: set[int] = set()

    @FUZZ
    @given(body=hostile_bodies())
    def post(body: bytes) -> None:
        response = client.post("/api/v1/reports", content=body, headers=ingest)
        statuses.add(response.status_code)
        assert response.status_code < 500, (response.status_code, response.text, body[:300])
        if response.status_code in (200, 201):
            accepted.add(response.json()["run_id"])
        else:
            error = response.json()["error"]
            assert error and "\n" not in error, error

    try:
        post()
        with engine.connect() as conn:
            stored = {row.run_id: decompress(row.report) for row in conn.execute(select(runs))}
        assert set(stored) == accepted
        for run_id, raw in stored.items():
            assert parse_report(raw, LIMITS).run_id == run_id
            assert client.get(f"/api/v1/runs/{run_id}", headers=reader).status_code == 200
        assert client.get(f"/api/v1/hosts/{HOST}", headers=reader).status_code in (200, 404)
        assert {201, 422} <= statuses  # the generator reached both sides of the validation
    finally:
        client.close()
        engine.dispose()
