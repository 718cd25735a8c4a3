"""The query parameters of the collector's API and web UI: one definition each, used by both surfaces, so a
page and its JSON twin (`/?stale=false` and `/api/v1/hosts?stale=false`) select the same rows.

Rules shared by every parameter:

- An empty value is the same as no value (`?role=&limit=`): HTML forms send empty fields.
- A bad value is a 400 with one line that starts with the parameter's name (BadRequestError).
- Numbers are ASCII digits only, bounded in length before conversion (agent.collector.digits).

| parameter | where | values |
|-----------|-------|--------|
| limit, offset | every listing | 1..1000 (default: 100 in the API, 50 in the UI), 0..10**9 |
| status | hosts | comma-separated host statuses (agent.report.Status), `stale` (= stale=true) |
| status | runs (fleet, one host) | comma-separated statuses (agent.report.Status) |
| status | webhook deliveries | pending, delivered or failed |
| stale | hosts | true/false, 1/0, yes/no (any case) |
| role, commit, q | hosts | any text (role exact, commit a prefix, q part of the host name) |
| seen | hosts | 1h, 24h, 7d (seen within), -1h, -24h, -7d (not seen for) |
| sort, order | hosts | host, last_seen, status, drift, commit; asc or desc |
| group | drift (API) | task (default) or host |
| task, role, host | drift | any text, matched exactly |
| kind | drift | corrective, intentional, recurring, unverifiable |
| hosts | a commit's rollout | running (default) or not_reached |
| commit | runs | any text (a prefix) |

`stale` in a host status list is the stale filter, not one more status: `status=drifted,stale` is the
drifted hosts that are stale; `status=stale&stale=false` asks for hosts both stale and not stale, and gets
none (an answer, not an error).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from agent.collector.digits import whole_number
from agent.collector.errors import BadRequestError
from agent.collector.queries import HOST_SORTS, HostFilter, Page, seen_window
from agent.report import DriftKind, Status

MAX_LIMIT = 1000
MAX_OFFSET = 10**9
API_PAGE_SIZE = 100
UI_PAGE_SIZE = 50
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
STALE = "stale"  # in a host status list: the hosts that are stale, whatever their status
RUN_STATUSES = tuple(s.value for s in Status)
HOST_STATUSES = (*RUN_STATUSES, STALE)
DELIVERY_STATUSES = ("pending", "sending", "delivered", "failed")
DRIFT_KINDS = tuple(k.value for k in DriftKind)
ORDERS = ("asc", "desc")
DRIFT_GROUPS = ("task", "host")
ROLLOUT_HOSTS = ("running", "not_reached")
DRIFT_FILTERS = ("task", "kind", "role", "host", "state")
DRIFT_STATES = ("open", "acknowledged", "accepted")  # the current states of a drift item


class Query(Protocol):
    """A request's query string: starlette's QueryParams, or anything with its get/getlist."""

    def get(self, key: str) -> str | None: ...

    def getlist(self, key: str) -> list[str]: ...


def _one_of(values: Iterable[str]) -> str:
    values = list(values)
    return f"{values[0]} or {values[1]}" if len(values) == 2 else f"one of {', '.join(values)}"


def text(q: Query, name: str) -> str | None:
    """The parameter's value; None when it is absent or empty. BadRequestError (400) for a NUL in it:
    no database stores one (PostgreSQL refuses it in any text), so no stored value can match it."""
    value = q.get(name) or None
    if value is not None and "\x00" in value:
        raise BadRequestError(f"{name}: must not contain a NUL character")
    return value


def number(q: Query, name: str, default: int, low: int, high: int) -> int:
    """A whole number from `low` to `high`, or `default` when absent."""
    raw = text(q, name)
    if raw is None:
        return default
    value = whole_number(raw)
    if value is None or not low <= value <= high:
        raise BadRequestError(f"{name}: expected a whole number from {low} to {high}")
    return value


def flag(q: Query, name: str) -> bool | None:
    """true/1/yes -> True, false/0/no -> False (any case); None when absent."""
    raw = text(q, name)
    if raw is None:
        return None
    if raw.lower() not in (*TRUE, *FALSE):
        raise BadRequestError(f"{name}: expected true or false")
    return raw.lower() in TRUE


def choice(q: Query, name: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
    """One of `choices`, or `default` when absent."""
    raw = text(q, name)
    if raw is None:
        return default
    if raw not in choices:
        raise BadRequestError(f"{name}: expected {_one_of(choices)}")
    return raw


def values(q: Query, name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated values, also over repeated parameters (`status=a,b&status=c`), each in `allowed`."""
    found = tuple(v for raw in q.getlist(name) for v in raw.split(",") if v)
    bad = [v for v in found if v not in allowed]
    if bad:
        raise BadRequestError(f"{name}: {bad[0][:40]!r} is not {_one_of(allowed)}")
    return found


def page(q: Query, size: int = API_PAGE_SIZE) -> Page:
    """`limit` (1 to 1000, default `size`) and `offset` (0 to 10**9, default 0)."""
    return Page(limit=number(q, "limit", size, 1, MAX_LIMIT), offset=number(q, "offset", 0, 0, MAX_OFFSET))


def host_filter(q: Query, now: datetime) -> HostFilter:
    """The host list's filters and sort (`now` places the `seen` windows)."""
    status = values(q, "status", HOST_STATUSES)
    stale = flag(q, "stale")
    contradiction = STALE in status and stale is False  # stale and not stale: no host, not an error
    if STALE in status:
        stale = True
    after, before = seen_window(text(q, "seen"), now)
    return HostFilter(status=tuple(s for s in status if s != STALE), role=text(q, "role"),
                      commit=text(q, "commit"), stale=stale, search=text(q, "q"),
                      sort=choice(q, "sort", tuple(HOST_SORTS), "host") or "host",
                      descending=choice(q, "order", ORDERS, "asc") == "desc",
                      seen_after=after, seen_before=before, contradiction=contradiction)


def run_statuses(q: Query) -> tuple[str, ...]:
    """`status` of a run listing: comma-separated run statuses."""
    return values(q, "status", RUN_STATUSES)


def delivery_status(q: Query) -> str | None:
    """`status` of the webhook deliveries: one delivery status."""
    return choice(q, "status", DELIVERY_STATUSES)


def drift_group(q: Query) -> str:
    """`group` of /api/v1/drift: task (one row per task, the default) or host (one per host and task)."""
    return choice(q, "group", DRIFT_GROUPS, "task") or "task"


def drift_filters(q: Query) -> dict[str, str | None]:
    """`task`, `kind`, `role`, `host` and `state` of the drift views (None: not filtered)."""
    filters = {name: text(q, name) for name in DRIFT_FILTERS}
    filters["kind"] = choice(q, "kind", DRIFT_KINDS)
    filters["state"] = choice(q, "state", DRIFT_STATES)
    return filters


def rollout_hosts(q: Query) -> str:
    """`hosts` of a commit's rollout: running (the default) or not_reached."""
    return choice(q, "hosts", ROLLOUT_HOSTS, "running") or "running"
