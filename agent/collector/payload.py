"""Parse a report body under limits, before anything walks it: UTF-8 only, nesting depth, string and key
lengths, no NaN/Infinity, no integer beyond 64 bits, no duplicate keys, no lone surrogates. Every refusal
is an InvalidReportError (422) with one readable line; nothing here recurses on the input, so a hostile
body cannot exhaust the stack.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from agent.collector.errors import InvalidReportError
from agent.errors import ReportError
from agent.report import SCHEMA_VERSION, Report, from_dict, parse_time

# A JSON string literal, escapes included (written so that the regex engine loops, not backtracks).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Keep only the brackets, braces as brackets: b'{"a": [1, {}]}' -> b'[[[]]]'.
_BRACKETS_ONLY = (bytes.maketrans(b"{}", b"[]"), bytes(set(range(256)) - set(b"[]{}")))


@dataclass(frozen=True)
class PayloadLimits:
    """What a report body may contain. Defaults are far above anything the agent sends."""

    max_depth: int = 32
    max_string_chars: int = 1024 * 1024
    max_key_chars: int = 256


def check_depth(raw: bytes, max_depth: int) -> None:
    """Refuse a body nested deeper than `max_depth` (counted on the bytes, before parsing: Python's json
    module recurses once per level). Each pass drops the innermost bracket pairs, so a body of depth N is
    empty after N passes; each pass is one scan in C."""
    brackets = _STRING.sub(b"", raw).translate(*_BRACKETS_ONLY)
    too_deep = b"[" * (max_depth + 1)  # that many opened in a row: no need to count further
    for _ in range(max_depth):
        if not brackets or too_deep in brackets:
            break
        brackets = brackets.replace(b"[]", b"")
    if not brackets:
        return
    if brackets.count(b"[") != brackets.count(b"]") or brackets.startswith(b"]"):
        raise InvalidReportError("report: invalid JSON (brackets or braces do not match)")
    raise InvalidReportError(f"report: nested deeper than {max_depth} levels")


def _refuse_constant(name: str) -> Any:
    raise InvalidReportError(f"report: {name} is not a JSON number")


# Integers a report may hold: the 64-bit range (every integer field of the report is far smaller).
MAX_INT_DIGITS = 19
INT_RANGE = 2**63


def _int(text: str) -> int:
    """A JSON integer; beyond 64 bits refused before int() converts it (quadratic in the digits)."""
    value = int(text) if len(text.lstrip("-")) <= MAX_INT_DIGITS else INT_RANGE
    if not -INT_RANGE <= value < INT_RANGE:
        shown = text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"
        raise InvalidReportError(f"report: number {shown} is out of range (integers are 64-bit)")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidReportError(f"report: number {text[:40]} is out of range")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidReportError(f"report: duplicate key {key[:80]!r}")
            seen.add(key)
    return result


@functools.lru_cache(maxsize=16)
def _decoder(max_key_chars: int) -> json.JSONDecoder:
    """The strict decoder, built once (json.loads with hooks builds a new one, and its scanner, per call).
    Its object hook is `_object`, and every key within `max_key_chars` (checked while the object is built).
    """
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = _object(pairs)
        if result and max(map(len, result)) > max_key_chars:
            raise InvalidReportError(f"report: a key is longer than {max_key_chars} characters")
        return result
    return json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_float, parse_int=_int,
                            object_pairs_hook=hook)


# A \u escape of a surrogate (\ud800-\udfff): the only way a lone surrogate gets into parsed JSON text,
# since decode_utf8 refuses encoded ones. (It may also match an escaped backslash before "ud8..": that only
# costs a walk.)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_text(text: str, limit: int, what: str) -> None:
    if len(text) > limit:
        raise InvalidReportError(f"report: a {what} is longer than {limit} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidReportError(f"report: a {what} contains a lone surrogate (\\ud800-\\udfff)") from None


def check_strings(data: Any, limits: PayloadLimits) -> None:
    """Walk the parsed value iteratively; every key and string value must be within the limits."""
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            _check_text(value, limits.max_string_chars, "string")
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, dict):
            for key in value:
                _check_text(key, limits.max_key_chars, "key")
            pending.extend(value.values())


def decode_utf8(raw: bytes) -> str:
    """The body as text: UTF-8 only (RFC 8259 section 8.1), without a byte order mark. Other encodings
    (UTF-16, UTF-32, Latin-1...) are refused rather than guessed: json.loads would guess them from the
    first bytes, after the depth check has read the bytes as UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidReportError(f"report: the body is not UTF-8 (byte 0x{raw[e.start]:02x} at offset "
                                 f"{e.start}); send JSON in UTF-8") from None
    if text.startswith("\ufeff"):
        raise InvalidReportError("report: the body starts with a byte order mark; send UTF-8 without one")
    return text


# After the escapes that hide a quote (\\\\ and \\") are dropped, every key's closing quote is followed by
# optional JSON whitespace and a colon; a string value can add matches (then the counts differ: the strict
# path decides), never hide one.
_KEY_END = re.compile(rb'"[ \t\n\r]*:')
# Whitespace between a quote and a colon: without it, _KEY_END's matches are exactly the '":' pairs. (Only a
# colon after it: a quote followed by whitespace alone, as in a string value that starts with spaces, is
# common in reports and says nothing about keys.)
_QUOTE_SPACE_COLON = re.compile(rb'"[ \t\n\r]+:')


def _fast_decode(raw: bytes, limits: PayloadLimits) -> Any:
    """The parsed body when msgspec's decoder (C) reads it and it provably breaks no rule of the strict
    decoder below, else None (then the strict decoder runs and names what is wrong). msgspec refuses
    what RFC 8259 refuses, NaN, Infinity and numbers out of a double's range; what it accepts but the
    rules do not is checked here: duplicate keys (the body's keys counted on the bytes against the
    decoded ones), key lengths, integers beyond 64 bits and the depth, in one iterative walk. Bodies
    longer than the string limit or with a surrogate escape go to the strict path."""
    if len(raw) > limits.max_string_chars or _SURROGATE_ESCAPE.search(raw):
        return None
    try:
        data = msgspec.json.decode(raw)
    except (msgspec.MsgspecError, RecursionError):
        return None
    if type(data) is not dict:  # not a report: the strict path says what it is
        return None
    keys = _keys_within_limits(data, limits)
    if keys is None or _keys_in_body(raw) != keys:
        return None
    return data


def _keys_within_limits(data: dict[str, Any], limits: PayloadLimits) -> int | None:
    """How many keys the decoded objects hold, or None when a key, an integer or the depth breaks a rule."""
    keys = 0
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > limits.max_depth:
            return None
        if type(value) is dict:
            if not value:
                continue
            if max(map(len, value)) > limits.max_key_chars:
                return None
            keys += len(value)
            value = value.values()
        for item in value:
            kind = type(item)
            if kind is dict or kind is list:
                pending.append((item, depth + 1))
            elif kind is int and not -INT_RANGE <= item < INT_RANGE:
                return None
    return keys


def _keys_in_body(raw: bytes) -> int:
    """Keys written in a valid JSON body (at least: a string value may add some, see _KEY_END)."""
    # Escaped quotes dropped (escaped backslashes first, so that a key ending in one keeps its closing
    # quote): a string's \\": then counts no key. Without them the body is scanned as it is.
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"") if b'\\"' in raw else raw
    if _QUOTE_SPACE_COLON.search(unescaped):  # whitespace between a key and its colon, maybe
        return len(_KEY_END.findall(unescaped))
    return unescaped.count(b'":')


def parse_report(raw: bytes, limits: PayloadLimits) -> Report:
    """Bytes of a POSTed report -> a validated Report, or InvalidReportError (422) naming the problem."""
    text = decode_utf8(raw)
    data = _fast_decode(raw, limits)
    if data is not None:
        report = _fast_report(data)
        if report is not None:
            return report
        data = _fast_decode(raw, limits)  # _fast_report replaced its times: decoded again, for the message
    if data is None:
        data = _strict_decode(raw, text, limits)
    try:
        return from_dict(data)
    except ReportError as e:
        message = str(e)
        where, sep, _ = message.partition(": ")
        field = where if sep and " " not in where and where != "report" else None
        raise InvalidReportError(message, field) from e


def _fast_report(data: dict[str, Any]) -> Report | None:
    """`from_dict(data)` built by msgspec (C) instead of the per-field decoders, or None when it refuses
    anything (then `from_dict` runs and names what is wrong). msgspec never reads a time: its RFC 3339
    parser is not `report.parse_time` (it takes naive times and years out of range in UTC, rounds a 7th
    fraction digit that parse_time drops, keeps the offset), so every time of the report is parsed by
    `parse_time` first, in place (`_time_plan`), and handed to msgspec as a datetime, which it passes
    through (`builtin_types`: it then refuses a string where a datetime goes, so a time the plan missed
    sends the report to from_dict). CHANGES `data` (its times), also when it returns None. Where msgspec
    and `from_dict` could differ otherwise: a missing schema_version (msgspec would take the default) is
    checked here first; ints for floats both convert; bools for ints, floats for ints, strings for
    numbers, nulls for required values, unknown enum values are refused by both (tests/collector/
    test_payload.py compares the two on generated reports)."""
    version = data.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION or not _parse_times(data, _time_plan(Report)):
        return None
    try:
        return msgspec.convert(data, Report, strict=True, builtin_types=(datetime,))
    except msgspec.MsgspecError:
        return None


# Where a record holds times: (field, how, plan of the nested record) with how "time" (a datetime field),
# "record" (a nested record) or "records" (a tuple of them); only fields with a time somewhere below.
_TimePlan = tuple[tuple[str, str, Any], ...]


@functools.cache
def _time_plan(cls: type) -> _TimePlan:
    """The time plan of dataclass `cls`, from its type hints. A time in a shape it does not follow (in a
    tuple of times, a dict) stays a string, which msgspec refuses for a datetime: the strict path then
    takes every such report, slower, never otherwise."""
    plan: list[tuple[str, str, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _not_optional(hints[f.name])
        if tp is datetime:
            plan.append((f.name, "time", None))
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if sub := _time_plan(tp):
                plan.append((f.name, "record", sub))
        elif typing.get_origin(tp) is tuple:
            item = _not_optional(typing.get_args(tp)[0])
            if isinstance(item, type) and dataclasses.is_dataclass(item) and (sub := _time_plan(item)):
                plan.append((f.name, "records", sub))
    return tuple(plan)


def _not_optional(tp: Any) -> Any:
    """`X | None` -> X; anything else as it is."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _parse_times(data: Any, plan: _TimePlan) -> bool:
    """Replace, in place, each time string `plan` names in `data` by `parse_time`'s datetime. False when
    one is not a string `parse_time` takes, or a record on the way is no object, a tuple no list (a null
    is left for msgspec: allowed where the field is optional, refused elsewhere)."""
    if type(data) is not dict:
        return False
    for name, how, sub in plan:
        value = data.get(name)
        if value is None:
            continue
        if how == "time":
            if type(value) is not str:
                return False
            try:
                data[name] = parse_time(value)
            except ValueError:
                return False
        elif how == "record":
            if not _parse_times(value, sub):
                return False
        elif type(value) is not list or not all(_parse_times(item, sub) for item in value):
            return False
    return True


def _strict_decode(raw: bytes, text: str, limits: PayloadLimits) -> Any:
    """The parsed body through Python's decoder with the hooks that enforce the rules, or the
    InvalidReportError that names the first broken one."""
    check_depth(raw, limits.max_depth)
    try:
        data = _decoder(limits.max_key_chars).decode(text)
    except ValueError as e:
        raise InvalidReportError(f"report: invalid JSON ({e})") from e
    except RecursionError:  # check_depth makes this unreachable; never a 500 if it were not
        raise InvalidReportError("report: nested too deeply to parse") from None
    # Keys were checked while parsing. A string value can be over its limit only if the body is, and
    # hold a lone surrogate only if the body has a surrogate escape: else the walk would find nothing.
    if len(text) > limits.max_string_chars or _SURROGATE_ESCAPE.search(raw):
        check_strings(data, limits)
    return data
