"""Property tests: hostile JSON against the real ingest endpoint (in-process app), on SQLite and PostgreSQL.

Besides random mutations of a real report, the generator asks explicitly for the shapes of issue 15
(tests/collector/hostile.py): bodies in other encodings than UTF-8, numbers beyond 64 bits and floats,
times at the edges of datetime and far from now, host names that are not one URL segment, and run_ids
re-used with another body or by another host.

Whatever the body, the answer is never a 5xx. Afterwards the database holds exactly the reports answered
201, each as its first accepted body (a 200 repeated it, a 409 differed from it), each decodes as a valid
v1 report that the query API serves back, and no stored time that orders or ages things is ahead of the
collector's clock.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from agent.collector import db, tokens
from agent.collector.app import create_app
from agent.collector.context import Collector, CollectorSettings
from agent.collector.payload import PayloadLimits, parse_report
from agent.collector.store import decompress
from agent.collector.tables import commits, drift_items, hosts, runs
from agent.collector.tokens import TokenKind
from agent.report import DriftKind, Pause, Status, format_time, to_dict
from tests.collector.conftest import ASGIClient
from tests.collector.hostile import BAD_HOST_NAMES, ENCODINGS, EXTREME_NUMBERS, EXTREME_TIMES
from tests.factory import BASE_TIME, drift_item, make_report

HOSTS = ("fuzz.example.com", "fuzz2.example.com")
LIMITS = PayloadLimits(max_depth=8, max_string_chars=4000, max_key_chars=40)
EXAMPLES = 300
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
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
# Any time of years 1..9999 with any offset under a day: the edges overflow once in UTC.
OFFSET_TIMES = st.builds(lambda moment, minutes: moment.isoformat() + ("+" if minutes >= 0 else "-")
                         + f"{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}",
                         st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)),
                         st.integers(-1439, 1439))
# Times ahead of the collector's clock, from a second to a century: each one is clamped when accepted.
AHEAD_TIMES = st.integers(1, 100 * 365 * 86400).map(lambda s: format_time(BASE_TIME + timedelta(seconds=s)))
TIMES = st.sampled_from(EXTREME_TIMES) | OFFSET_TIMES | AHEAD_TIMES
TIME_PATHS = [("finished_at",), ("started_at",), ("source", "committed_at"), ("drift", 0, "first_seen_at"),
              ("drift", 1, "first_seen_at"), ("pause", "since"), ("pause", "until")]
# A few run_ids shared by many examples, so that re-use with another body (or host) happens often.
RUN_IDS = st.sampled_from([f"fuzz-shared-{i}" for i in range(12)]) | st.integers(0, 10**9).map(str)
PLACEHOLDER = "@@RAW@@"


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found += _paths(child, (*prefix, key))
    return found


def _base(run_id: str, host: str) -> dict[str, Any]:
    report = make_report(host, status=Status.DRIFTED, run_id=run_id, pause=Pause("fuzz", since=BASE_TIME),
                         drift=(drift_item(), drift_item("motd", kind=DriftKind.RECURRING)))
    return to_dict(report)


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value


def _mutate(draw: st.DrawFn, data: dict[str, Any]) -> None:
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_paths(data)))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON)


def _text(draw: st.DrawFn, data: dict[str, Any], shape: str) -> str:
    """The body as text, with the shapes that have to be written raw (numbers json.dumps cannot write)."""
    text = json.dumps(data, allow_nan=True, ensure_ascii=draw(st.booleans()))
    if shape == "deep":
        depth = draw(st.integers(1, 3000))
        text = text[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    elif shape == "duplicate":
        text = text[:-1] + ', "host": ' + json.dumps(draw(TEXT)) + "}"
    elif shape == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif shape == "long":
        text = text[:-1] + ', "x": "' + "y" * draw(st.integers(3990, 4010)) + '"}'
    return text.replace(f'"{PLACEHOLDER}"', draw(st.sampled_from(EXTREME_NUMBERS)), 1)


SHAPES = ["as_is", "deep", "duplicate", "truncate", "long", "bytes", "encoding", "number", "time", "host"]


TARGETED = {"encoding", "number", "time", "host"}


@st.composite
def hostile_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """(the shape asked for, the body)."""
    host = draw(st.sampled_from(HOSTS))
    data, shape = _base(draw(RUN_IDS), host), draw(st.sampled_from(SHAPES))
    if shape == "number":
        _set(data, draw(st.sampled_from([p for p in _paths(data) if p[0] != "run_id"])), PLACEHOLDER)
    elif shape == "time":
        for path in draw(st.lists(st.sampled_from(TIME_PATHS), min_size=1, max_size=3)):
            _set(data, path, draw(TIMES))
    elif shape == "host":
        data["host"] = draw(st.sampled_from(BAD_HOST_NAMES) | TEXT)
    if shape not in TARGETED or draw(st.integers(0, 3)) == 0:
        _mutate(draw, data)
    body = _text(draw, data, shape).encode("utf-8", "surrogatepass")
    if shape == "bytes":
        body = body[:-1] + draw(st.binary(max_size=8)) + b"}"
    elif shape == "encoding":
        text = body.decode("utf-8", "surrogatepass")[:-1] + ', "note": "\u00e9t\u00e9"}'  # not ASCII
        codec = draw(st.sampled_from(ENCODINGS))
        body = text.encode(codec, "surrogatepass" if codec.startswith("utf") else "replace")
    return shape, body


def _refused_example(shape: str) -> tuple[str, bytes]:
    """One body of a targeted shape that must be refused (422), whatever the random sequence draws: the
    derandomized draws shift whenever the report gains a field, so coverage of each shape's refusal
    must not hang on them."""
    data = _base("fuzz-example", HOSTS[0])
    if shape == "time":
        data["finished_at"] = EXTREME_TIMES[1]  # overflows once in UTC
    elif shape == "host":
        data["host"] = BAD_HOST_NAMES[0]
    elif shape == "number":
        data["stats"]["ok"] = PLACEHOLDER
    text = json.dumps(data).replace(f'"{PLACEHOLDER}"', EXTREME_NUMBERS[0], 1)
    if shape == "encoding":
        return shape, (text[:-1] + ', "note": "\u00e9t\u00e9"}').encode("utf-16")
    return shape, text.encode()


def _repeat_bodies() -> list[bytes]:
    """A valid report, the same report again (200), then another report under its run_id (409): the
    derandomized draws reach repeats only by chance, and which draws they make shifts with the report's
    fields and with the test's worker."""
    data = _base("fuzz-repeat", HOSTS[0])
    first = json.dumps(data).encode()
    data["stats"]["ok"] = 2
    other = json.dumps(data).encode()
    return [first, first, other]


def _app(db_url: str) -> tuple[ASGIClient, Any, dict[str, dict[str, str]], dict[str, str]]:
    engine = db.create(db_url)
    db.prepare(engine)
    ingest = {h: {"Authorization": f"Bearer {tokens.create(engine, TokenKind.INGEST, h, now=BASE_TIME)[1]}"}
              for h in HOSTS}
    reader = tokens.create(engine, TokenKind.READER, "fuzzer", now=BASE_TIME)[1]
    settings_ = CollectorSettings(max_body_bytes=64 * 1024, payload=LIMITS)
    client = ASGIClient(create_app(Collector(engine, settings_, now=lambda: BASE_TIME)))
    return client, engine, ingest, {"Authorization": f"Bearer {reader}"}


def _host_of(body: bytes) -> str:
    """Whose token to send: the body's host when it names one we have a token for (else the first)."""
    for host in HOSTS:
        if f'"host": "{host}"'.encode() in body:
            return host
    return HOSTS[0]


class Ledger:
    """What the fuzzer sent and what the collector answered."""

    def __init__(self) -> None:
        self.answers: Counter[int] = Counter()
        self.shapes: Counter[tuple[str, int]] = Counter()
        self.first: dict[str, Any] = {}  # run_id -> the JSON of the body answered 201
        self.repeats: list[tuple[str, int, Any]] = []  # (run_id, 200 or 409, the JSON sent)

    def record(self, shape: str, body: bytes, status: int, answer: dict[str, Any]) -> None:
        self.answers[status] += 1
        self.shapes[(shape, status)] += 1
        if status == 201:
            self.first[answer["run_id"]] = json.loads(body)
        elif status in (200, 409):
            sent = json.loads(body)
            self.repeats.append((sent["run_id"], status, sent))


def _check_database(engine: Any, client: ASGIClient, reader: dict[str, str], ledger: Ledger) -> None:
    with engine.connect() as conn:
        stored = {row.run_id: decompress(row.report) for row in conn.execute(select(runs))}
        late = conn.execute(select(runs.c.run_id).where(runs.c.finished_at > runs.c.received_at)).all()
        ahead = [conn.execute(select(t).where(c > BASE_TIME)).all()
                 for t, c in ((hosts, hosts.c.last_finished_at), (drift_items, drift_items.c.first_seen_at),
                              (commits, commits.c.committed_at), (runs, runs.c.started_at))]
        host_names = conn.execute(select(hosts.c.host)).scalars().all()
    assert set(stored) == set(ledger.first)
    for run_id, raw in stored.items():
        assert json.loads(raw) == ledger.first[run_id]
        assert parse_report(raw, LIMITS).run_id == run_id
        assert client.get(f"/api/v1/runs/{run_id}", headers=reader).status_code == 200
    for run_id, status, sent in ledger.repeats:  # 200: the same report again; 409: another one
        assert (sent == ledger.first[run_id]) == (status == 200), (run_id, status)
    assert late == [] and ahead == [[], [], [], []]  # nothing ahead of the collector's clock
    for host in host_names:
        assert client.get(f"/api/v1/hosts/{host}", headers=reader).status_code == 200


def test_hostile_reports_never_get_a_5xx_and_only_accepted_ones_are_stored(db_url):
    client, engine, ingest, reader = _app(db_url)
    ledger = Ledger()

    @FUZZ
    @given(case=hostile_bodies())
    @example(case=_refused_example("time"))
    @example(case=_refused_example("host"))
    @example(case=_refused_example("number"))
    @example(case=_refused_example("encoding"))
    def post(case: tuple[str, bytes]) -> None:
        shape, body = case
        response = client.post("/api/v1/reports", content=body, headers=ingest[_host_of(body)])
        assert response.status_code < 500, (response.status_code, response.text, body[:300])
        answer = response.json()
        ledger.record(shape, body, response.status_code, answer)
        if response.status_code >= 400:
            assert answer["error"] and "\n" not in answer["error"], answer

    try:
        post()
        for body in _repeat_bodies():  # the repeat rules, whatever the random draws reached
            response = client.post("/api/v1/reports", content=body, headers=ingest[HOSTS[0]])
            ledger.record("as_is", body, response.status_code, response.json())
        _check_database(engine, client, reader, ledger)
        assert {201, 200, 409, 422} <= set(ledger.answers)  # both sides of every rule were reached
        assert {s for s, status in ledger.shapes if status == 422} >= {"encoding", "number", "time", "host"}
        assert ledger.shapes[("encoding", 201)] == 0  # no encoding but UTF-8 gets in
        kind = "postgresql" if db_url.startswith("postgres") else "sqlite"
        server_errors = sum(n for status, n in ledger.answers.items() if status >= 500)
        print(f"\nfuzz ingest on {kind}: {sum(ledger.answers.values())} bodies, 5xx: {server_errors}, "
              f"answers {dict(sorted(ledger.answers.items()))}")  # shown with pytest -s
    finally:
        client.close()
        engine.dispose()

