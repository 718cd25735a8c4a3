"""Hostile report bodies: each is a one-line 4xx, never a 5xx, and nothing is stored."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from agent.collector.errors import InvalidReportError
from agent.collector.payload import PayloadLimits, check_depth, parse_report
from agent.collector.tables import runs
from agent.report import Status, to_dict, to_json
from tests.factory import make_report

HOST = "web01.example.com"


def _report_text(**extra: object) -> str:
    return json.dumps({**to_dict(make_report(HOST, status=Status.DRIFTED)), **extra})


def _splice(text: str, key: str, raw_value: str) -> bytes:
    """The report with a key whose value is written raw (JSON the json module would not write)."""
    return (text[:-1] + f', "{key}": {raw_value}}}').encode()


HOSTILE = {
    "deep_lists": ("x", "[" * 100_000 + "]" * 100_000, "nested deeper than 32 levels"),
    "deep_objects": ("x", '{"a":' * 5000 + "1" + "}" * 5000, "nested deeper than 32 levels"),
    "unclosed_deep": ("x", "[" * 100_000, "invalid JSON (brackets or braces do not match)"),
    "truncated": ("x", '{"a": [1, {"b": 2', "invalid JSON (brackets or braces do not match)"),
    "nan": ("x", "NaN", "NaN is not a JSON number"),
    "infinity": ("x", "-Infinity", "-Infinity is not a JSON number"),
    "overflowing_float": ("x", "1e999", "out of range"),
    "huge_int": ("x", "9" * 5000, "out of range (integers are 64-bit)"),
    "duplicate_key": ("host", '"other.example.com"', "duplicate key 'host'"),
    "lone_surrogate": ("x", '"\\ud800"', "lone surrogate"),
    "long_string": ("x", '"' + "a" * 2_000_000 + '"', "longer than 1048576 characters"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_bodies_are_422_with_one_line_and_nothing_stored(case, client, token_for, engine):
    key, raw_value, expected = HOSTILE[case]
    body = _splice(_report_text(), key, raw_value)
    response = client.post("/api/v1/reports", content=body,
                           headers={"Authorization": f"Bearer {token_for(HOST)}"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert expected in error
    assert "\n" not in error and len(error) < 300
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(runs)).scalar_one() == 0


@pytest.mark.parametrize(("body", "limit", "error"), [
    (b"1", 0, None), (b"[]", 0, "nested deeper than 0 levels"), (b"[[][[]]]", 3, None),
    (b"[[][[]]]", 2, "nested deeper than 2 levels"), (b'{"a": {"b": [1, {}]}}', 4, None),
    (b'{"a": {"b": [1, {}]}}', 3, "nested deeper than 3 levels"),
    # unbalanced, when the depth check cannot prove the body shallow: refused here, not left to the parser
    (b"[[" * 20, 5, "brackets or braces do not match"), (b"][" * 20, 5, "brackets or braces do not match"),
])
def test_depth_is_counted_exactly(body, limit, error):
    if error is None:
        check_depth(body, limit)
    else:
        with pytest.raises(InvalidReportError, match=re.escape(error)):
            check_depth(body, limit)


def test_brackets_inside_strings_do_not_count_as_nesting():
    check_depth(json.dumps({"a": "[" * 1000 + "{" * 1000}).encode(), 2)
    check_depth(json.dumps({"a": '\\"[[[['}).encode(), 2)
    with pytest.raises(InvalidReportError, match="deeper than 2"):
        check_depth(b'{"a": [["\\"]"]]}', 2)


def test_a_long_key_is_refused():
    body = _report_text(**{"k" * 300: 1}).encode()
    with pytest.raises(InvalidReportError, match="a key is longer than 256"):
        parse_report(body, PayloadLimits())


def test_limits_are_settings():
    limits = PayloadLimits(max_depth=3, max_string_chars=10)
    with pytest.raises(InvalidReportError, match="longer than 10"):
        parse_report(to_json(make_report(HOST)).encode(), limits)
    assert parse_report(to_json(make_report(HOST)).encode(), PayloadLimits()).host == HOST


def test_a_real_report_fits_the_default_limits():
    report = make_report(HOST, status=Status.DRIFTED)
    assert parse_report(to_json(report).encode(), PayloadLimits()) == report


@pytest.mark.parametrize(("where", "text", "refused"), [
    ("value", '"\\ud800"', True), ("value", '"a\\uDC00b"', True),
    ("nested value", '["x", {"y": "\\udbff"}]', True),
    ("key", '{"\\ud800": 1}', True), ("pair", '"\\ud83d\\ude00"', False),  # a valid pair is one character
    ("escaped backslash", '"\\\\ud800"', False),  # the text \ud800, not an escape
])
def test_lone_surrogates_are_refused_wherever_they_are(where, text, refused):
    """The string walk runs only when the body has a surrogate escape: every place one can hide is found."""
    body = _splice(_report_text(), "x", text)
    if refused:
        with pytest.raises(InvalidReportError, match="lone surrogate"):
            parse_report(body, PayloadLimits())
    else:
        assert parse_report(body, PayloadLimits()).host == HOST


# (body, what happens: None taken by the fast path, "" left to the strict decoder, which accepts it (a value
# that starts with a colon looks like a key's end: counted, so the counts differ), else part of the refusal)
FAST_PATH_BODIES = {
    "plain": (_report_text().encode(), None),
    "escaped_quotes_in_values": (_report_text(x='say \\" : "hi" \\\\', y=["\\\\", '"', "a:"]).encode(), None),
    "a_value_like_a_key": (_report_text(x=' : not a key', y={"k": "\" :"}).encode(), ""),
    "values_that_start_with_whitespace": (_report_text(x="    location /app {", y=["\tindented", " "]).encode(),
                                          None),
    "json_written_in_a_value": (_report_text(x='{"a": 1, "b": {"c": "d"}}').encode(), None),
    "a_key_that_ends_in_a_backslash": (_report_text(**{"k\\": 1}).encode(), None),
    "duplicate_after_whitespace": (_splice(_report_text(), "x", '{"a" :1, "a"\n:2}'), "duplicate key 'a'"),
    "duplicate_through_an_escape": (_splice(_report_text(), "x", '{"\\u0061":1,"a":2}'), "duplicate key 'a'"),
    "duplicate_top_level_after_escaped_backslash": (_splice(_report_text(x="\\\\"), "x", "1"),
                                                    "duplicate key 'x'"),
    "int_beyond_64_bits": (_splice(_report_text(), "x", str(2**63)), "out of range (integers are 64-bit)"),
    "int_at_64_bits": (_splice(_report_text(), "x", str(-2**63)), None),
    "depth_33": (_splice(_report_text(), "x", "[" * 32 + "]" * 32), "nested deeper than 32 levels"),
    "depth_32": (_splice(_report_text(), "x", "[" * 31 + "]" * 31), None),
    "long_key": (_splice(_report_text(), "x", '{"' + "k" * 257 + '": 1}'), "a key is longer than 256"),
}


@pytest.mark.parametrize("case", FAST_PATH_BODIES, ids=list(FAST_PATH_BODIES))
def test_the_fast_decoder_takes_only_what_the_strict_one_accepts(case: str) -> None:
    """payload._fast_decode (msgspec) gives the strict decoder's value or steps aside (None) for every
    body the strict decoder refuses, so the refusal keeps its message."""
    from agent.collector import payload
    body, refusal = FAST_PATH_BODIES[case]
    limits = PayloadLimits()
    fast = payload._fast_decode(body, limits)
    if refusal is None:
        assert fast is not None, "a valid body should take the fast path"
        assert fast == payload._strict_decode(body, body.decode(), limits)
        parse_report(body, limits)
    elif refusal == "":
        assert fast is None
        parse_report(body, limits)
    else:
        assert fast is None
        with pytest.raises(InvalidReportError, match=re.escape(refusal)):
            parse_report(body, limits)


# -- the fast path's invariant, as a property: raw JSON text written the ways the json module never writes
# it (keys that differ only before their escapes are decoded, \/ and \u escapes of letters, quotes and
# backslashes, whitespace around colons, duplicate keys at any depth, integers past 64 bits, -0, 1e2,
# 1E400), then sometimes one byte inserted. Whatever msgspec takes must be what the strict decoder takes.

def _escaped(char: str, how: int) -> str:
    if char in '"\\':
        return ("\\" + char, f"\\u{ord(char):04x}", f"\\u{ord(char):04X}")[how % 3]
    if char == "/" and how % 2:
        return "\\/"
    if how % 3 == 1 and ord(char) < 0x10000:
        return f"\\u{ord(char):04x}"
    if char == "\U0001f600" and how % 3 == 2:
        return "\\ud83d\\ude00"
    return char


_RAW_STRING = st.lists(st.tuples(st.sampled_from(list('ab"\\/: \u00e9\U0001f600\x7f{[,')), st.integers(0, 5)),
                       max_size=4).map(lambda cs: '"' + "".join(_escaped(c, h) for c, h in cs) + '"')
_WS = st.sampled_from(["", "", " ", "\n", "\t ", "\r\n"])
_RAW_SCALAR = _RAW_STRING | st.sampled_from(["1", "-0", "-0.0", "0.5", "1e2", "1E+2", "true", "false", "null",
                                             str(2**63 - 1), str(-2**63), str(2**63), str(2**64), "1E400",
                                             "1e-400", "0.1000000000000000055511151231257827"])


def _raw_object(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pairs = st.lists(st.tuples(_WS, _RAW_STRING, _WS, _WS, values, _WS), max_size=4)
    return st.tuples(pairs, st.integers(0, 3).map(lambda n: n == 0)).map(lambda pb: "{" + ",".join(
        f"{a}{k}{b}:{c}{v}{d}" for a, k, b, c, v, d in pb[0] + pb[0][:1] * pb[1]) + "}")  # maybe a duplicate


_RAW_JSON = st.recursive(_RAW_SCALAR, lambda inner: _raw_object(inner) | st.lists(inner, max_size=3).map(
    lambda items: "[" + ",".join(items) + "]"), max_leaves=12)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@example(body='{"a":[-9223372036854775809]}', insert=None, depth=32, key_chars=8)  # each rule the fast path
@example(body='{"a":[[{}]]}', insert=None, depth=3, key_chars=8)  # checks itself, once for sure
@example(body='{"abcd":1}', insert=None, depth=3, key_chars=3)
@example(body='{"a":{"\\/":1,"/" :2}}', insert=None, depth=3, key_chars=3)
@given(body=_raw_object(_RAW_JSON), insert=st.none() | st.tuples(st.integers(0, 10**6), st.sampled_from(
    list(b'"\\:,{}[]u0 \x00\xff'))), depth=st.sampled_from([3, 32]), key_chars=st.sampled_from([3, 8]))
def test_the_fast_decoder_never_takes_what_the_strict_one_refuses_or_reads_otherwise(
        body: str, insert: tuple[int, int] | None, depth: int, key_chars: int) -> None:
    from agent.collector import payload
    raw = body.encode()
    if insert is not None:
        at = insert[0] % (len(raw) + 1)
        raw = raw[:at] + bytes([insert[1]]) + raw[at:]
    limits = PayloadLimits(max_depth=depth, max_key_chars=key_chars)
    fast = payload._fast_decode(raw, limits)
    if fast is None:
        return
    strict = payload._strict_decode(raw, payload.decode_utf8(raw), limits)  # raises if it refuses

    def typed(value: Any) -> Any:  # 1, 1.0 and True are equal in Python; -0.0 and 0.0 too
        if isinstance(value, dict):
            return [(k, typed(v)) for k, v in value.items()]
        if isinstance(value, list):
            return [typed(v) for v in value]
        return (type(value).__name__, repr(value))
    assert typed(fast) == typed(strict)


# -- the typed fast path (payload._fast_report: msgspec builds the Report, every time parsed by parse_time):
# a full report (every record that holds a time), with values at one to three of its paths replaced by
# values that break a rule, or by times written every way ISO 8601 and RFC 3339 allow or almost allow, or
# deleted. Whatever _fast_report builds, from_dict must build the same (repr: types, time zones and floats
# too); whatever from_dict refuses, _fast_report must step aside for (then from_dict names the problem).

def _full_report() -> dict[str, Any]:
    from datetime import timedelta

    from agent.report import (
        Enforcement,
        GateState,
        Pause,
        RolloutInfo,
        WatchInfo,
        WaveSize,
    )
    from tests.factory import BASE_TIME, drift_item
    report = make_report(HOST, status=Status.DRIFTED, drift=(drift_item(), drift_item("other task")),
                         pause=Pause("maintenance", by="ops", since=BASE_TIME, until=BASE_TIME + timedelta(hours=1)),
                         rollout=RolloutInfo("canary", next(iter(GateState)), "first wave", "ab" * 32,
                                             wave_sizes=(WaveSize("canary", 1),), checked_at=BASE_TIME,
                                             enforced=Enforcement("c" * 40, Status.DRIFTED, "held",
                                                                  drift=(drift_item(),))),
                         watch=WatchInfo(watched=3, changed=("/etc/x",)), warnings=("w",))
    data = to_dict(report)
    data["drift"][0]["first_seen_at"] = "2026-01-01T00:00:00.5+02:00"
    # every record type of a report, so that the mutations below reach each one's fields (the drifted
    # report has no failed task, error, contested path nor enforced apply of its own)
    data["apply"]["failed_tasks"] = [{"task": "restart nginx", "message": "service failed", "item": "a"}]
    data["errors"] = [{"phase": "apply", "message": "a task failed"}]
    data["watch"]["contested"] = [{"path": "/etc/x", "flips": 2}]
    data["rollout"]["enforced"]["apply"] = {"attempted": True, "changed": 1, "failed_tasks": []}
    return data


def _record_types(cls: type) -> set[type]:
    """Every dataclass a report can hold, `cls` included (from the type hints)."""
    import dataclasses
    import typing
    found, pending = set(), [cls]
    while pending:
        tp = pending.pop()
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if tp in found:
                continue
            found.add(tp)
            pending.extend(typing.get_type_hints(tp).values())
        else:
            pending.extend(typing.get_args(tp))
    return found


def test_the_full_report_holds_every_record_type() -> None:
    """The property test below mutates the fields of _full_report only: a record type missing from it (an
    optional one left out, an empty tuple of them) would never be compared between the two paths."""
    from agent.report import Report, decode
    data = _full_report()
    held: set[type] = set()

    def walk(cls: type, value: Any) -> None:
        import dataclasses
        import typing
        held.add(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            sub = value.get(f.name)
            for tp in (hints[f.name], *typing.get_args(hints[f.name])):
                if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(sub, dict):
                    walk(tp, sub)
                elif typing.get_origin(tp) is tuple and isinstance(sub, list):
                    item = typing.get_args(tp)[0]
                    if isinstance(item, type) and dataclasses.is_dataclass(item):
                        for element in sub:
                            walk(item, element)
    decode(Report, data)  # valid as it is
    walk(Report, data)
    assert held == _record_types(Report), sorted(t.__name__ for t in _record_types(Report) - held)


_TIMES = ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00z", "2026-01-01t00:00:00Z", "2026-01-01 00:00:00Z",
          "2026-01-01T00:00:00", "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00-00:00",
          "2026-01-01T00:00:00+05:30", "2026-01-01T00:00:00+0530", "2026-01-01T00:00:00+05",
          "2026-01-01T00:00:00+01:00:30", "2026-01-01T00:00:00.123Z", "2026-01-01T00:00:00,123Z",
          "2026-01-01T00:00:00.1234567Z", "2026-01-01T00:00:00.999999949Z", "2026-01-01T24:00:00Z",
          "2026-12-31T23:59:60Z", "2026-02-30T00:00:00Z", "2026-01-01T00:00Z", "2026-01-01T00Z",
          "2026-01-01Z", "2026-01-01", "20260101T000000Z", "2026-W01-1T00:00:00Z", "2026-001T00:00:00Z",
          "0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00",
          "9999-12-31T23:59:59.999999Z", "+2026-01-01T00:00:00Z", " 2026-01-01T00:00:00Z",
          "2026-01-01T00:00:00Z ", "2026-01-01T00:00:00\u00a0Z", "\uff12026-01-01T00:00:00Z",
          "2026-01-01T00:00:00+24:00", "2026-01-01T00:00:00-23:59", "2026-01-01T00:00:00ZZ", ""]
_VALUES = st.sampled_from(_TIMES) | st.sampled_from(
    [None, True, False, 0, 1, -1, 1.0, 1.5, -0.0, 2**53 + 1, 2**63 - 1, "1", "", "x" * 300, "in_sync",
     "drifted", "no-such-kind", "corrective", "schedule", [], {}, ["a"], [1], [None], {"a": 1},
     {"path": "/p", "before": None, "after": "x"}]) | st.text(max_size=3)


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at] if at else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*at, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*at, i))
    return found


_FULL_PATHS = _paths(_full_report())


def _change(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    """Set (or with "<delete>", delete) what `path` leads to, if it still leads somewhere."""
    parent: Any = data
    for step in path[:-1]:
        found = (isinstance(parent, dict) and step in parent) or (
            isinstance(parent, list) and isinstance(step, int) and step < len(parent))
        if not found:
            return
        parent = parent[step]
    last = path[-1]
    if isinstance(parent, dict):
        if value == "<delete>":
            parent.pop(last, None)
        else:
            parent[last] = value
    elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
        parent[last] = value


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(changes=st.lists(st.tuples(st.sampled_from(_FULL_PATHS), st.none() | _VALUES | st.just("<delete>"),
                                  st.sampled_from(_TIMES)), min_size=0, max_size=3))
def test_the_typed_fast_path_builds_what_from_dict_builds_or_steps_aside(
        changes: list[tuple[tuple[Any, ...], Any, str]]) -> None:
    import copy

    from agent.collector import payload
    from agent.errors import ReportError
    from agent.report import from_dict
    data = _full_report()
    for path, value, time_text in changes:
        if value is None and str(path[-1]).endswith(("_at", "since", "until")):
            value = time_text  # a time's path gets another time string, half the time
        _change(data, path, value)
    fast = payload._fast_report(copy.deepcopy(data))
    try:
        strict = from_dict(data)
    except ReportError:
        assert fast is None
        return
    assert fast is not None or changes, "the full report itself takes the typed path"
    if fast is not None:
        assert repr(fast) == repr(strict)


def test_the_typed_fast_path_takes_a_valid_report_and_times_as_parse_time_reads_them() -> None:
    """Not just a path that always steps aside: a full report is built by msgspec, with parse_time's times
    (in UTC, every offset applied), and a time msgspec would read but parse_time refuses is refused."""
    from agent.collector import payload
    from agent.report import from_dict
    data = _full_report()
    fast = payload._fast_report(json.loads(json.dumps(data)))
    assert fast is not None and repr(fast) == repr(from_dict(data))
    assert str(fast.drift[0].first_seen_at) == "2025-12-31 22:00:00.500000+00:00"
    for text in ("2026-01-01T00:00:00", "2026-01-01T24:00:00Z", "0001-01-01T00:00:00+01:00"):
        body = json.dumps({**data, "finished_at": text}).encode()
        with pytest.raises(InvalidReportError, match=r"^finished_at: "):
            parse_report(body, PayloadLimits())
    # msgspec rounds a 7th fraction digit (.123457), parse_time drops it
    seven = payload._fast_report({**json.loads(json.dumps(data)), "finished_at": "2026-01-01T00:00:00.1234567Z"})
    assert seven is not None and seven.finished_at.microsecond == 123456
