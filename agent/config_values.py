"""Value parsers of the settings table (agent.config.SETTINGS): each takes a raw YAML value and returns
the typed value or raises ValueError with a short reason; and the check every secret file passes."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str | int | float) -> float:
    """'30m' -> 1800.0; '90s', '1.5h', '2d', a bare number of seconds."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as 30s, 5m, 1h")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a duration (use e.g. 30s, 5m, 1h, 2d)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _duration(value: Any) -> float:
    return parse_duration(value)


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def _opt_string(value: Any) -> str | None:
    return None if value is None else _string(value)


def _opt_http_url(value: Any) -> str | None:
    """A collector's base URL: http(s)://HOST[:PORT][/PATH], no query or fragment; None when unset. What
    httpx would refuse only when a report is sent (no scheme, another scheme, a port out of range), and what
    would garble the API paths appended to it (a query, a fragment), is refused here."""
    if value is None:
        return None
    text = _string(value).strip()
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok, parts = False, urlsplit("")
    # a query or fragment, even empty, would end up in the middle of the API paths the agent appends
    if (parts.scheme.lower() not in ("http", "https") or not parts.hostname or not port_ok or "?" in text
            or "#" in text):
        shown = f"{text!r} is" if "@" not in text else "it is"  # user:password@ is not repeated
        raise ValueError(f"{shown} not a collector URL: expected http(s)://HOST[:PORT][/PATH], "
                         "e.g. https://collector.example.com:8080")
    return text


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a whole number >= 0")
    return value


def _string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB)?\s*$", re.IGNORECASE)


def _regex_list(value: Any) -> tuple[str, ...]:
    patterns = _string_list(value)
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"item {i}: invalid regular expression {pattern!r} ({e})") from None
    return patterns


def _size(value: Any) -> int:
    """A size in bytes: a whole number, or text such as 512KB, 100MB, 1GB (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match or int(match.group(1)) < 1:
        raise ValueError("expected a size such as 512KB, 100MB or a number of bytes > 0")
    unit = (match.group(2) or "B").upper()
    return int(match.group(1)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[unit]


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError("expected a mapping with string keys")
    return dict(value)


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"expected one of: {', '.join(allowed)}")
        return str(value)

    return check


def private_file(path: Path | None, origin: str, name: str) -> Path | None:
    """A secret file must exist and be private (like ssh's rule for keys): our owner, no group/other bits."""
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError as e:
        raise ConfigError(f"{origin}: '{name}': {path}: cannot use it ({e.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{origin}: '{name}': {path} is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"{origin}: '{name}': permissions {stat.S_IMODE(info.st_mode):04o} for '{path}' "
            f"are too open: it must not be accessible by group or others (chmod 600 {path})")
    if info.st_uid != os.geteuid():
        raise ConfigError(f"{origin}: '{name}': {path} is owned by uid {info.st_uid}, not by "
                          f"the agent's user (uid {os.geteuid()})")
    return path
