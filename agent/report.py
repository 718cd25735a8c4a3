"""Report schema v1: typed records and the one JSON codec, shared by the agent and the collector.

Decoding validates: a wrong type or value raises ReportError naming the field (``drift[2].kind``).
Unknown extra fields are tolerated (ignored); an unknown major schema_version is refused.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from agent.errors import ReportError

SCHEMA_VERSION = 1


class Trigger(enum.StrEnum):
    SCHEDULE = "schedule"
    NEW_COMMIT = "new_commit"
    MANUAL = "manual"
    RETRY = "retry"
    WATCH = "watch"  # a watched managed path changed (docs/watch.md)


class Mode(enum.StrEnum):
    ENFORCE = "enforce"
    DETECT = "detect"
    CHECK = "check"


class Phase(enum.StrEnum):
    FETCH = "fetch"
    VERIFY = "verify"
    PLAN = "plan"
    CHECK = "check"
    APPLY = "apply"
    RECHECK = "recheck"
    DONE = "done"


class Status(enum.StrEnum):
    IN_SYNC = "in_sync"
    DRIFTED = "drifted"
    CORRECTED = "corrected"
    FAILED = "failed"
    ERROR = "error"
    PAUSED = "paused"


class DriftKind(enum.StrEnum):
    CORRECTIVE = "corrective"
    INTENTIONAL = "intentional"
    RECURRING = "recurring"
    UNVERIFIABLE = "unverifiable"


class SignatureStatus(enum.StrEnum):
    VERIFIED = "verified"
    UNSIGNED = "unsigned"
    BAD = "bad"
    UNTRUSTED = "untrusted"
    NOT_CHECKED = "not_checked"


@dataclass(frozen=True)
class Signature:
    status: SignatureStatus = SignatureStatus.NOT_CHECKED
    signer: str | None = None


@dataclass(frozen=True)
class SourceInfo:
    url: str
    ref: str
    commit: str | None = None
    previous_commit: str | None = None
    author: str | None = None
    committed_at: datetime | None = None
    subject: str | None = None
    signature: Signature = field(default_factory=Signature)


@dataclass(frozen=True)
class Diff:
    path: str
    before: str | None
    after: str | None


@dataclass(frozen=True)
class DriftItem:
    play: str
    task: str
    role: str | None
    module: str
    kind: DriftKind
    diffs: tuple[Diff, ...] = ()
    first_seen_at: datetime | None = None
    # Extensions of v1 (optional): why the kind (e.g. what check mode could not verify), and the task's
    # identity beyond its name: its Ansible role, its file and line in the repository, its loop item.
    reason: str | None = None
    ansible_role: str | None = None
    task_path: str | None = None
    item: str | None = None
    diff_truncated: bool = False  # diffs shortened or left out to keep the report under its size cap


@dataclass(frozen=True)
class FailedTask:
    task: str
    message: str
    item: str | None = None  # the loop item that failed (extension of v1)


@dataclass(frozen=True)
class ApplyResult:
    attempted: bool
    changed: int
    failed_tasks: tuple[FailedTask, ...] = ()


@dataclass(frozen=True)
class Stats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: int = 0
    rescued: int = 0  # extensions of v1: the rest of Ansible's recap
    ignored: int = 0


@dataclass(frozen=True)
class ErrorItem:
    phase: Phase
    message: str


@dataclass(frozen=True)
class Durations:
    fetch: float | None = None
    check: float | None = None
    apply: float | None = None
    recheck: float | None = None
    total: float | None = None


@dataclass(frozen=True)
class Pause:
    reason: str
    by: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    checks_too: bool = False


class GateState(enum.StrEnum):
    """The rollout gate's answer for a new commit (docs/rollout.md, The gate)."""
    ALLOWED = "allowed"
    WAITING = "waiting"
    HALTED = "halted"
    FROZEN = "frozen"
    UNREACHABLE = "unreachable"
    # The commit failed before the gate could decide (its rollout.yml, inventory, plan or playbooks): the
    # block then only says so and what was enforced instead; wave and policy_digest are empty.
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class WaveSize:
    name: str
    size: int


@dataclass(frozen=True)
class RolloutInfo:
    """Where the host stands in the rollout of the commit it checked (extension of v1; docs/rollout.md).

    ``wave_sizes``: every wave of the policy with its host count, as this host computed them from the
    inventory (the collector takes them from here). ``plan_digest``: sha256 of the plan of the host's
    approval-required roles, None when it has none. ``enforcing_commit``: the converged commit the host
    keeps enforcing while the gate holds the new one, None when the gate allowed it.
    """
    wave: str
    gate: GateState
    reason: str
    policy_digest: str
    wave_sizes: tuple[WaveSize, ...] = ()
    plan_digest: str | None = None
    enforcing_commit: str | None = None
    # When the commit's drift in this report was checked: this run's start when it checked the commit,
    # an earlier run's when the gate's answer had not changed since (the drift is that run's).
    checked_at: datetime | None = None
    enforced: Enforcement | None = None  # what this run did about the converged commit while holding


@dataclass(frozen=True)
class Enforcement:
    """The host's last converged commit, enforced while the gate holds the new one (docs/rollout.md).

    ``commit``: the converged commit checked (None: the host has converged to none yet, so there is
    nothing to enforce). ``status``: that check's outcome as a report status (``in_sync``, ``corrected``,
    ``drifted`` when a window, freeze or pause held the corrective apply, ``failed``, ``error``; None when
    nothing was checked). ``reason``: one line. ``drift`` and ``apply``: its drift and its apply, as a
    report's.
    """
    commit: str | None
    status: Status | None
    reason: str
    drift: tuple[DriftItem, ...] = ()
    apply: ApplyResult | None = None


@dataclass(frozen=True)
class ContestedPath:
    """A managed path another writer keeps putting back (docs/watch.md, 6)."""
    path: str
    flips: int  # times it changed again after the agent corrected it, within the window


@dataclass(frozen=True)
class WatchInfo:
    """The daemon's watch of managed paths when this run started (extension of v1; docs/watch.md).

    ``changed``: for a run with trigger ``watch``, the changed paths that started it (the first 20;
    ``changed_count`` is all of them). ``unwatched``: managed paths past the inotify limits, checked by
    the schedule only, ``reason`` says why and ``unwatched_roles`` which roles they belong to.
    ``blind``: tasks whose managed path is not known, so that no watch can see them (a no_log task, a
    module that names no path), as "role: task name" (the first 20, redacted like every task name;
    ``blind_count`` is all of them): the scheduled check finds their drift.
    """
    watched: int = 0
    directories: int = 0
    unwatched: int = 0
    unwatched_roles: tuple[str, ...] = ()
    reason: str | None = None
    changed: tuple[str, ...] = ()
    changed_count: int = 0
    contested: tuple[ContestedPath, ...] = ()
    blind: tuple[str, ...] = ()
    blind_count: int = 0


@dataclass(frozen=True)
class Report:
    run_id: str
    host: str
    agent_version: str
    trigger: Trigger
    mode: Mode
    started_at: datetime
    finished_at: datetime
    source: SourceInfo
    phase_reached: Phase
    status: Status
    roles: tuple[str, ...] = ()
    drift: tuple[DriftItem, ...] = ()
    apply: ApplyResult | None = None
    stats: Stats = field(default_factory=Stats)
    errors: tuple[ErrorItem, ...] = ()
    durations_s: Durations = field(default_factory=Durations)
    schema_version: int = SCHEMA_VERSION
    # Extensions of v1 (optional for senders, always written by this agent):
    interval_s: int | None = None
    splay_s: int | None = None
    pause: Pause | None = None
    compacted: int = 0
    # Run-level notes, one line each: where this run knowingly differed from `ansible-playbook` run from
    # the checkout (naming its entry in docs/ansible-semantics.md, e.g. [D-no-terminal]), what it could not
    # do as asked, or what the agent had to work around (a quarantined state file, a trimmed report).
    warnings: tuple[str, ...] = ()
    truncated: bool = False  # shortened to stay under the report size cap (warnings say what)
    rollout: RolloutInfo | None = None  # None: no rollout.yml in the config repo, or not got that far
    watch: WatchInfo | None = None  # None: not run by a daemon that watches managed paths


# ---------------------------------------------------------------------------------------------
# Codec

T = TypeVar("T")


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a Z suffix."""
    if value.tzinfo is None:
        raise ValueError("naive datetime in a report")
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TimeRangeError(ValueError):
    """A well-formed time that is not representable in UTC."""


def parse_time(text: str) -> datetime:
    """RFC 3339 with a zone -> an aware UTC datetime. ValueError when it is not one, or when it falls
    outside years 1..9999 once in UTC (0001-01-01T00:00:00+01:00, 9999-12-31T23:59:59-01:00)."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("a time zone is required")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise TimeRangeError("out of range in UTC (years 1 to 9999)") from None


# How each type encodes, found on first use: a dataclass's field names, or one of the kinds below.
_PLAN_OF: dict[type, tuple[str, ...] | str] = {}
_SCALARS = frozenset({str, int, float, bool})


def _encode_plan(value: Any) -> tuple[str, ...] | str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return tuple(f.name for f in dataclasses.fields(value))
    if isinstance(value, enum.Enum):
        return "enum"
    if isinstance(value, datetime):
        return "time"
    if isinstance(value, tuple | list):
        return "list"
    return "as is"


def _encode(value: Any) -> Any:
    if value is None or type(value) in _SCALARS:
        return value
    plan = _PLAN_OF.get(type(value))
    if plan is None:
        plan = _PLAN_OF[type(value)] = _encode_plan(value)
    if type(plan) is tuple:
        return {name: _encode(getattr(value, name)) for name in plan}
    if plan == "enum":
        return value._value_  # what .value returns, without the enum property's lookup
    if plan == "time":
        return format_time(value)
    if plan == "list":
        return [_encode(v) for v in value]
    return value


def encode(record: Any) -> Any:
    """Any record of this module -> JSON-ready values."""
    return _encode(record)


def decode(cls: type[T], data: Any) -> T:
    """JSON-ready values -> a record of this module (validating like from_dict)."""
    return _decode_dataclass(cls, data, "")


def to_dict(report: Report) -> dict[str, Any]:
    result: dict[str, Any] = _encode(report)
    return result


def to_json(report: Report, *, indent: int | None = None) -> str:
    return json.dumps(to_dict(report), indent=indent, ensure_ascii=False, sort_keys=indent is not None)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


# Decoding is planned once per type: `_decoder(tp)` builds a function (value, where) -> decoded value, so
# decoding a report does no typing introspection (get_origin, is_dataclass, fields) per value. The errors
# are ReportError, "<where>: <what is wrong>".
_Decoder = Callable[[Any, str], Any]
_DECODERS: dict[Any, _Decoder] = {}
_PLANS: dict[type, list[tuple[str, _Decoder, bool]]] = {}


def _plan(cls: type) -> list[tuple[str, _Decoder, bool]]:
    """(field name, its decoder, required) for each field of a dataclass, in order."""
    plan = _PLANS.get(cls)
    if plan is None:
        hints = _hints(cls)
        plan = [(f.name, _decoder(hints[f.name]),
                 f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                for f in dataclasses.fields(cls)]
        _PLANS[cls] = plan
    return plan


def _decode_dataclass(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise ReportError(f"{where or 'report'}: expected an object, got {type(data).__name__}")
    kwargs: dict[str, Any] = {}
    for name, decode_field, required in _plan(cls):
        if name in data:
            kwargs[name] = decode_field(data[name], f"{where}.{name}" if where else name)
        elif required:
            raise ReportError(f"{f'{where}.{name}' if where else name}: required field is missing")
    return cls(**kwargs)


def _decoder(tp: Any) -> _Decoder:
    found = _DECODERS.get(tp)
    if found is None:
        found = _DECODERS[tp] = _build_decoder(tp)
    return found


def _not_null(decode_value: _Decoder) -> _Decoder:
    def decode_not_null(value: Any, where: str) -> Any:
        if value is None:
            raise ReportError(f"{where}: must not be null")
        return decode_value(value, where)
    return decode_not_null


def _build_decoder(tp: Any) -> _Decoder:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        nullable = type(None) in args
        inner = _decoder(next(a for a in args if a is not type(None)))

        def decode_union(value: Any, where: str) -> Any:
            if value is None:
                if nullable:
                    return None
                raise ReportError(f"{where}: must not be null")
            return inner(value, where)
        return decode_union
    if origin is tuple:
        item = _decoder(typing.get_args(tp)[0])

        def decode_tuple(value: Any, where: str) -> Any:
            if not isinstance(value, list):
                raise ReportError(f"{where}: expected a list, got {type(value).__name__}")
            return tuple([item(v, f"{where}[{i}]") for i, v in enumerate(value)])
        return _not_null(decode_tuple)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        cls = tp
        return _not_null(lambda value, where: _decode_dataclass(cls, value, where))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _exact(tp, {m.value: m for m in tp}, _not_null(functools.partial(_decode_enum, tp)))
    if tp is datetime:
        return _not_null(_decode_time)
    if tp not in (bool, int, float, str):
        raise TypeError(f"no decoder for {tp!r}")
    return _exact(tp, None, _not_null(functools.partial(_decode_scalar, tp)))


def _exact(tp: type, members: dict[Any, Any] | None, checked: _Decoder) -> _Decoder:
    """`checked`, after a shortcut for the common value: one of exactly type `tp` (an enum's: a str that
    is one of its values, looked up in `members`), which `checked` would return as it is (or as that
    member). Anything else, and every error, goes through `checked`."""
    if members is None:
        def decode_exact(value: Any, where: str) -> Any:
            return value if type(value) is tp else checked(value, where)
        return decode_exact

    def decode_member(value: Any, where: str) -> Any:
        found = members.get(value) if type(value) is str else None
        return found if found is not None else checked(value, where)
    return decode_member


def _decode_enum(tp: type[enum.Enum], value: Any, where: str) -> Any:
    try:
        return tp(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in tp)
        raise ReportError(f"{where}: {value!r} is not one of {allowed}") from None


def _decode_time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise ReportError(f"{where}: expected an RFC 3339 time string")
    try:
        return parse_time(value)
    except TimeRangeError as e:
        raise ReportError(f"{where}: {value[:40]!r} is {e}") from e
    except ValueError as e:
        raise ReportError(f"{where}: {value[:40]!r} is not an RFC 3339 time with a zone") from e


def _decode_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond the float range (a 400-digit number)
            raise ReportError(f"{where}: {str(value)[:20]}... is out of range for a number") from None
    if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
        return value
    raise ReportError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")


def from_dict(data: Any) -> Report:
    if not isinstance(data, dict):
        raise ReportError("report: expected a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ReportError(f"schema_version: {version!r} is not supported (this side speaks {SCHEMA_VERSION})")
    return _decode_dataclass(Report, data, "")


def from_json(text: str | bytes) -> Report:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ReportError(f"report: invalid JSON ({e})") from e
    return from_dict(data)


def exit_code(status: Status) -> int:
    """The CLI's exit code for a report status: 0 in sync or corrected, 2 drift left, 1 failed."""
    if status in (Status.IN_SYNC, Status.CORRECTED):
        return 0
    if status in (Status.DRIFTED, Status.PAUSED):
        return 2
    return 1
