"""Pure: the rollout policy (`rollout.yml` of the config repo), wave assignment, criteria and splay.

No I/O, no clock: values in, values out (docs/rollout.md is the design and the file format). Errors are
`agent.errors.RolloutError`, one line naming the key, e.g. ``rollout.yml: waves[1].share: ...``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from agent.errors import RolloutError

FILE_NAME = "rollout.yml"
UNREACHABLE_CHOICES = ("hold-after-first-wave", "hold-all")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_HASH_SALT = b"gitops-agent-rollout\0"


@dataclass(frozen=True)
class Share:
    """A share of hosts: ``percent`` of them (0-100), or exactly ``count`` hosts."""
    percent: float | None = None
    count: int | None = None

    def of(self, total: int, *, round_down: bool = False) -> int:
        if self.count is not None:
            return self.count
        assert self.percent is not None
        exact = self.percent * total / 100
        return int(exact) if round_down else int(exact + 0.5)


@dataclass(frozen=True)
class Criteria:
    """What the previous wave must reach: a share converged on the commit, at most so many failed."""
    converged: Share = Share(percent=100.0)
    max_failed: Share = Share(count=0)


@dataclass(frozen=True)
class Wave:
    name: str
    groups: tuple[str, ...] = ()
    share: Share | None = None
    soak_s: int = 0
    criteria: Criteria = Criteria()


@dataclass(frozen=True)
class Window:
    """Applies allowed from ``start`` local time on ``days`` for ``duration_s``, in ``timezone``."""
    name: str
    days: tuple[str, ...]
    start: time
    duration_s: int
    timezone: str
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    corrective_anytime: bool = True


@dataclass(frozen=True)
class Freeze:
    name: str
    start_at: datetime
    end_at: datetime


@dataclass(frozen=True)
class Policy:
    waves: tuple[Wave, ...]
    splay_s: int = 0
    on_collector_unreachable: str = "hold-after-first-wave"
    approve_roles: tuple[str, ...] = ()
    windows: tuple[Window, ...] = ()
    freezes: tuple[Freeze, ...] = ()

    def digest(self) -> str:
        """sha256 (hex) of the policy's canonical JSON: the key of a rollout with the commit."""
        text = json.dumps(asdict(self), sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def parse_policy(text: str) -> Policy:
    """Parse and validate the text of ``rollout.yml``. Raises RolloutError (one line naming the key)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RolloutError(f"{FILE_NAME}: not valid YAML: {str(e).splitlines()[0]}") from e
    return policy_from_data(data)


def policy_from_data(data: object) -> Policy:
    """Validate the parsed YAML/JSON of a policy (see parse_policy)."""
    top = _mapping(data, "", {"version", "waves", "splay", "on_collector_unreachable", "approve",
                              "windows", "freezes"})
    if top.get("version") != 1:
        raise _error("version", f"must be 1, got {top.get('version')!r}")
    unreachable = top.get("on_collector_unreachable", UNREACHABLE_CHOICES[0])
    if unreachable not in UNREACHABLE_CHOICES:
        raise _error("on_collector_unreachable", f"must be one of {', '.join(UNREACHABLE_CHOICES)}, "
                     f"got {unreachable!r}")
    approve = _mapping(top.get("approve", {}), "approve", {"roles"})
    return Policy(
        waves=_waves(top.get("waves")),
        splay_s=_duration(top.get("splay", "0s"), "splay"),
        on_collector_unreachable=unreachable,
        approve_roles=_names(approve.get("roles", []), "approve.roles"),
        windows=tuple(_window(w, f"windows[{i}]") for i, w in enumerate(_list(top.get("windows", []),
                                                                                 "windows"))),
        freezes=tuple(_freeze(f, f"freezes[{i}]") for i, f in enumerate(_list(top.get("freezes", []),
                                                                                 "freezes"))),
    )


def _waves(raw: object) -> tuple[Wave, ...]:
    items = _list(raw, "waves")
    if not items:
        raise _error("waves", "must list at least one wave")
    waves = tuple(_wave(w, f"waves[{i}]", first=i == 0) for i, w in enumerate(items))
    seen: set[str] = set()
    for i, wave in enumerate(waves):
        if wave.name in seen:
            raise _error(f"waves[{i}].name", f"{wave.name!r} is used by an earlier wave")
        seen.add(wave.name)
        last = i == len(waves) - 1
        catch_all = not wave.groups and wave.share is None
        if catch_all and not last:
            raise _error(f"waves[{i}]", "only the last wave may have neither groups nor share")
        if last and not catch_all:
            raise _error(f"waves[{i}]", "the last wave must have neither groups nor share "
                         "(it takes every host not taken yet)")
    fleet_shares = sum(w.share.percent or 0 for w in waves if w.share and not w.groups)
    if fleet_shares > 100:
        raise _error("waves", f"the shares of the fleet add up to {fleet_shares:g}%, more than 100%")
    return waves


def _wave(raw: object, key: str, *, first: bool) -> Wave:
    wave = _mapping(raw, key, {"name", "groups", "share", "soak", "criteria"})
    if first and ("soak" in wave or "criteria" in wave):
        raise _error(f"{key}", "the first wave has no previous wave: no soak or criteria")
    share = None
    if "share" in wave:
        share = _share(wave["share"], f"{key}.share", percent_only=True)
    return Wave(name=_name(wave.get("name"), f"{key}.name"),
                groups=_names(wave.get("groups", []), f"{key}.groups"),
                share=share,
                soak_s=_duration(wave.get("soak", "0s"), f"{key}.soak"),
                criteria=_criteria(wave.get("criteria", {}), f"{key}.criteria"))


def _criteria(raw: object, key: str) -> Criteria:
    crit = _mapping(raw, key, {"converged", "max_failed"})
    default = Criteria()
    converged = (_share(crit["converged"], f"{key}.converged", percent_only=True)
                 if "converged" in crit else default.converged)
    max_failed = (_share(crit["max_failed"], f"{key}.max_failed", percent_only=False)
                  if "max_failed" in crit else default.max_failed)
    return Criteria(converged=converged, max_failed=max_failed)


def _window(raw: object, key: str) -> Window:
    win = _mapping(raw, key, {"name", "roles", "groups", "days", "start", "duration", "timezone",
                              "corrective"})
    for required in ("days", "start", "duration", "timezone"):
        if required not in win:
            raise _error(f"{key}.{required}", "is required")
    roles = _names(win.get("roles", []), f"{key}.roles")
    groups = _names(win.get("groups", []), f"{key}.groups")
    if not roles and not groups:
        raise _error(key, "names no roles and no groups: say which hosts it applies to")
    days = tuple(_list(win["days"], f"{key}.days"))
    for day in days:
        if day not in DAYS:
            raise _error(f"{key}.days", f"{day!r} is not one of {', '.join(DAYS)}")
    if not days:
        raise _error(f"{key}.days", "must list at least one day")
    start = win["start"]
    match = _HHMM.match(start) if isinstance(start, str) else None
    if match is None:
        raise _error(f"{key}.start", f"must be a local time HH:MM in quotes, got {start!r}")
    duration_s = _duration(win["duration"], f"{key}.duration")
    if not 0 < duration_s <= 7 * 86400:
        raise _error(f"{key}.duration", "must be more than 0s and at most 7d")
    corrective = win.get("corrective", "anytime")
    if corrective not in ("anytime", "window"):
        raise _error(f"{key}.corrective", f"must be anytime or window, got {corrective!r}")
    return Window(name=_name(win.get("name"), f"{key}.name"), days=days,
                  start=time(int(match[1]), int(match[2])), duration_s=duration_s,
                  timezone=_timezone(win["timezone"], f"{key}.timezone"), roles=roles, groups=groups,
                  corrective_anytime=corrective == "anytime")


def _freeze(raw: object, key: str) -> Freeze:
    frz = _mapping(raw, key, {"name", "start", "end"})
    start_at, end_at = _instant(frz.get("start"), f"{key}.start"), _instant(frz.get("end"), f"{key}.end")
    if end_at <= start_at:
        raise _error(f"{key}.end", "must be after start")
    return Freeze(name=_name(frz.get("name"), f"{key}.name"), start_at=start_at, end_at=end_at)


# -- small validators ---------------------------------------------------------------------------------

def _error(key: str, message: str) -> RolloutError:
    return RolloutError(f"{FILE_NAME}: {key}: {message}" if key else f"{FILE_NAME}: {message}")


def _mapping(raw: object, key: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise _error(key, f"must be a mapping, got {type(raw).__name__}")
    for name in raw:
        if name not in allowed:
            where = f"{key}.{name}" if key else str(name)
            raise _error(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return raw


def _list(raw: object, key: str) -> list[Any]:
    if not isinstance(raw, list):
        raise _error(key, f"must be a list, got {type(raw).__name__}")
    return raw


def _name(raw: object, key: str) -> str:
    if not isinstance(raw, str) or not _NAME.match(raw):
        raise _error(key, f"must be a name of a-z, 0-9, _ and - (at most 63), got {raw!r}")
    return raw


def _names(raw: object, key: str) -> tuple[str, ...]:
    items = _list(raw, key)
    for item in items:
        if not isinstance(item, str) or not item:
            raise _error(key, f"must be a list of names, got {item!r}")
    return tuple(items)


def _duration(raw: object, key: str) -> int:
    match = _DURATION.match(raw) if isinstance(raw, str) else None
    if match is None:
        raise _error(key, f"must be a duration like 30s, 10m, 1h or 2d, got {raw!r}")
    return int(match[1]) * _UNIT_S[match[2]]


def _share(raw: object, key: str, *, percent_only: bool) -> Share:
    if not percent_only and isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return Share(count=raw)
    match = _PERCENT.match(raw) if isinstance(raw, str) else None
    if match is None or float(match[1]) > 100:
        wanted = 'a percentage like "25%"' if percent_only else 'a host count or a percentage like "2%"'
        raise _error(key, f"must be {wanted}, got {raw!r}")
    return Share(percent=float(match[1]))


def _timezone(raw: object, key: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise _error(key, f"must be an IANA time zone name like Europe/Berlin, got {raw!r}")
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise _error(key, f"unknown time zone {raw!r}") from e
    return raw


def _instant(raw: object, key: str) -> datetime:
    if isinstance(raw, datetime):  # YAML parses unquoted timestamps itself
        value = raw
    elif isinstance(raw, str):
        try:
            value = datetime.fromisoformat(raw)
        except ValueError as e:
            raise _error(key, f"must be an ISO 8601 time with an offset, got {raw!r}") from e
    else:
        raise _error(key, f"must be an ISO 8601 time with an offset, got {raw!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise _error(key, f"needs an offset (e.g. +01:00 or Z), got {raw!r}")
    return value


# -- waves, criteria, splay ---------------------------------------------------------------------------

def host_hash(host: str) -> bytes:
    """The stable pseudo-random key of a host: sha256 of a fixed salt and its name."""
    return hashlib.sha256(_HASH_SALT + host.encode()).digest()


def assign_waves(policy: Policy, hosts: Mapping[str, frozenset[str]]) -> dict[str, str]:
    """Map every host (name → its inventory groups) to the name of its wave (docs/rollout.md, Waves).

    Deterministic in (policy, host names, groups): hosts are taken in sha256 order of their names.
    """
    order = sorted(hosts, key=host_hash)
    remaining = dict.fromkeys(order)  # keeps hash order
    result: dict[str, str] = {}
    for wave in policy.waves:
        pool = [h for h in remaining if not wave.groups or hosts[h] & set(wave.groups)]
        if wave.share is not None:
            base = len(order) if not wave.groups else sum(1 for h in order if hosts[h] & set(wave.groups))
            pool = pool[:wave.share.of(base)]
        for host in pool:
            result[host] = wave.name
            del remaining[host]
    return result


def wave_sizes(policy: Policy, assignment: Mapping[str, str]) -> dict[str, int]:
    """Hosts per wave name, every wave of the policy present (0 for an empty one)."""
    sizes = {wave.name: 0 for wave in policy.waves}
    for wave_name in assignment.values():
        sizes[wave_name] += 1
    return sizes


def criteria_met(criteria: Criteria, *, size: int, converged: int, failed: int) -> bool:
    """Whether a wave of ``size`` hosts with these counts meets ``criteria`` (empty wave: met)."""
    if size == 0:
        return True
    return (failed <= criteria.max_failed.of(size, round_down=True)
            and converged * 100 >= _needed_percent(criteria) * size)


def criteria_failed(criteria: Criteria, *, size: int, failed: int) -> bool:
    """Whether the wave can no longer meet ``criteria``: more failed than allowed (a halt)."""
    return size > 0 and failed > criteria.max_failed.of(size, round_down=True)


def _needed_percent(criteria: Criteria) -> float:
    share = criteria.converged
    return share.percent if share.percent is not None else 100.0


def splay_offset(policy: Policy, host: str) -> timedelta:
    """The host's fixed delay in [0, splay) after its wave opens, from the hash of its name."""
    if policy.splay_s <= 0:
        return timedelta(0)
    fraction = int.from_bytes(host_hash(host)[8:16], "big") / 2**64
    return timedelta(seconds=int(fraction * policy.splay_s))
