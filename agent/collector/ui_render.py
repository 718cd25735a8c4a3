"""Rendering for the web UI: the Jinja2 environment (autoescape on), security headers, server-side diffs
and the SVG run strip. Pure functions over values; no database, no requests."""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse

from agent.report import parse_time

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATUSES = ("in_sync", "corrected", "drifted", "failed", "error", "paused")
MAX_DIFF_LINES = 400


@dataclass(frozen=True)
class DiffLine:
    kind: str  # "add", "del", "hunk", "ctx", "meta"
    text: str


def unified_diff(path: str, before: str | None, after: str | None) -> list[DiffLine]:
    """A unified diff of two texts as classified lines (the template colours them by kind): `before` is
    the host now ("-" lines), `after` what Git would make it ("+" lines)."""
    old, new = (before or "").splitlines(), (after or "").splitlines()
    lines: list[DiffLine] = []
    # before = the host as it is now, after = what Git (the commit being checked) would make it
    for text in difflib.unified_diff(old, new, f"{path} (host now)", f"{path} (Git)", lineterm="", n=3):
        if text.startswith(("---", "+++")):
            kind = "meta"
        elif text.startswith("@@"):
            kind = "hunk"
        else:
            kind = {"+": "add", "-": "del"}.get(text[:1], "ctx")
        lines.append(DiffLine(kind, text))
    if len(lines) > MAX_DIFF_LINES:
        hidden = len(lines) - MAX_DIFF_LINES
        lines = [*lines[:MAX_DIFF_LINES], DiffLine("meta", f"... {hidden} more lines not shown")]
    return lines


@dataclass(frozen=True)
class StripCell:
    x: int
    status: str
    run_id: str
    label: str


def run_strip(runs: list[dict[str, Any]], *, width: int = 12, gap: int = 2) -> list[StripCell]:
    """Oldest-to-newest cells for the inline SVG strip of recent run statuses (runs come newest first)."""
    cells = []
    for i, run in enumerate(reversed(runs)):
        label = f"{run['finished_at']} {run['status']} drift={run['drift_count']}"
        cells.append(StripCell(i * (width + gap), str(run["status"]), str(run["run_id"]), label))
    return cells


def ago(value: str | datetime | None, now: datetime) -> str:
    """'3m ago', '2h ago', '4d ago' (or 'in 5m' for a time ahead)."""
    if value is None:
        return "never"
    moment = parse_time(value) if isinstance(value, str) else value
    seconds = int((now - moment).total_seconds())
    future, seconds = seconds < 0, abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{seconds // size}{unit}"
            break
    else:
        text = f"{seconds}s"
    return f"in {text}" if future else f"{text} ago"


def short_time(value: str | None) -> str:
    """RFC 3339 -> 'YYYY-MM-DD HH:MM:SSZ' for tables."""
    if not value:
        return "-"
    return value[:19].replace("T", " ") + "Z"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 60:
        return f"{int(value // 60)}m {value % 60:04.1f}s"
    return f"{value:.1f}s"


@functools.cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("agent.collector", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(short_time=short_time, seconds=seconds, short_sha=lambda s: (s or "")[:10])
    env.globals.update(ago=ago, unified_diff=unified_diff, STATUSES=STATUSES)
    return env


def render_page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """The HTML page of `template` rendered with `context`, with the security headers."""
    html = environment().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
