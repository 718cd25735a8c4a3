"""Compliance charts and the figures each scope shows, for the compliance pages and the host and task
pages (docs/drift-review.md section 5). No route here (compliance_views has them), so ui.py may use it.

Charts are inline SVG polylines computed here and drawn by templates/_compliance.html: no script, no
style attribute, no outside resource, so the CSP stays as it is. The last point of every series is
today's live figure; the days before come from `compliance_daily` (compliance_store.snapshot).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from agent.collector import compliance_store as cs
from agent.collector.compliance import Figure

if TYPE_CHECKING:
    from agent.collector.context import Collector

Series = list[tuple[str, Figure]]


# -- figures as JSON and as charts -----------------------------------------------------------------------


def figure_json(f: Figure) -> dict[str, Any]:
    """A figure: host counts, and the shares (0..1, null when no checked host is in scope)."""
    return {"hosts": f.hosts, "in_sync": f.in_sync, "in_sync_with_exceptions": f.in_sync_with_exceptions,
            "unknown": f.unknown, "share": _round(f.share),
            "share_with_exceptions": _round(f.share_with_exceptions)}


def _round(share: float | None) -> float | None:
    return None if share is None else round(share, 4)


def series_json(points: Series) -> list[dict[str, Any]]:
    return [{"day": day, **figure_json(f)} for day, f in points]


def with_today(points: Series, today: Figure, now: datetime) -> Series:
    """The stored days, with today's row replaced by the live figure."""
    day = cs.day_of(now)
    return [*(p for p in points if p[0] != day), (day, today)]


def percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.1f} %"


@dataclass(frozen=True)
class Chart:
    """An inline SVG line chart of one series: `plain` and `with_exceptions` are polyline point lists
    (one per run of days with a figure), `dots` the points themselves; x is the day, y the share."""

    width: int
    height: int
    plain: tuple[str, ...]
    with_exceptions: tuple[str, ...]
    dots: tuple[tuple[float, float, str], ...]
    label: str
    first_day: str
    last_day: str
    now: Figure


def chart(points: Series, *, now: datetime, days: int, title: str, width: int = 360,
          height: int = 80) -> Chart:
    """`points` (oldest first, the last being today) on a `days`-wide axis ending today."""
    end = now.astimezone(UTC).date()
    start = end - timedelta(days=days - 1)
    pad = 3.0
    step = (width - 2 * pad) / max(days - 1, 1)

    def xy(day: str, share: float) -> tuple[float, float]:
        x = pad + (datetime.fromisoformat(day).date() - start).days * step
        return round(x, 1), round(pad + (1.0 - share) * (height - 2 * pad), 1)

    def lines(attr: str) -> tuple[str, ...]:
        runs: list[list[str]] = [[]]
        previous = None
        for day, f in points:
            share = getattr(f, attr)
            current = datetime.fromisoformat(day).date()
            if share is None or (previous is not None and (current - previous).days > 1):
                runs.append([])
            if share is not None:
                x, y = xy(day, share)
                runs[-1].append(f"{x},{y}")
            previous = current
        return tuple(" ".join(r) for r in runs if len(r) > 1)

    dots = tuple((*xy(day, f.share), f"{day}: {percent(f.share)} in sync, {percent(f.share_with_exceptions)} "
                                     "with exceptions")
                 for day, f in points if f.share is not None)
    latest = points[-1][1] if points else Figure(0, 0, 0)
    label = (f"{title}: {percent(latest.share)} of hosts in sync now, "
             f"{percent(latest.share_with_exceptions)} with exceptions; last {days} days")
    return Chart(width, height, lines("share"), lines("share_with_exceptions"), dots, label,
                 start.isoformat(), end.isoformat(), latest)


# -- what each scope shows ------------------------------------------------------------------------------


def fleet_view(engine: Any, now: datetime, days: int) -> dict[str, Any]:
    figures = cs.current(engine, now)
    fleet = with_today(cs.series(engine, "fleet", "", now=now, days=days), figures.fleet, now)
    per_role = cs.role_series(engine, now=now, days=days)
    roles = [{"role": r, "figure": f, "series": with_today(per_role.get(r, []), f, now)}
             for r, f in sorted(figures.roles.items())]
    return {"figure": figures.fleet, "series": fleet, "roles": roles}


def role_view(engine: Any, role: str, now: datetime, days: int) -> dict[str, Any]:
    figures = cs.current(engine, now, tasks=True, role=role)
    figure = figures.roles.get(role, Figure(0, 0, 0))
    series = with_today(cs.series(engine, "role", role, now=now, days=days), figure, now)
    tasks = [{"task": t, "figure": f} for (_, t), f in sorted(figures.tasks.items(),
                                                               key=lambda kv: (kv[1].in_sync, kv[0][1]))]
    return {"figure": figure, "series": series, "tasks": tasks}


def task_view(engine: Any, role: str, task: str, now: datetime, days: int) -> dict[str, Any]:
    figures = cs.current(engine, now, tasks=True, role=role, task=task)
    figure = figures.task(role, task)
    series = cs.series(engine, "task", cs.task_scope(role, task), now=now, days=days, role=role)
    return {"figure": figure, "series": with_today(series, figure, now)}


def host_view(engine: Any, host: str, now: datetime, days: int) -> dict[str, Any]:
    figure = cs.host_figure(engine, host, now)
    series = cs.host_series(engine, host, now=now, days=days)
    return {"figure": figure, "series": with_today(series, figure, now) if figure.hosts else series}


async def host_panel(collector: Collector, host: str) -> Chart:
    """The host page's chart (ui.host)."""
    now = collector.now()
    view = await collector.db(host_view, collector.engine, host, now, cs.DEFAULT_DAYS)
    return chart(view["series"], now=now, days=cs.DEFAULT_DAYS, title=f"Host {host}")


async def task_panels(collector: Collector, task: str, roles: list[str]) -> list[dict[str, Any]]:
    """A task's drift page: one chart per role the task drifts in (ui.drift), with its JSON twin's URL."""
    now, out = collector.now(), []
    for role in sorted(set(roles))[:5]:
        view = await collector.db(task_view, collector.engine, role, task, now, cs.DEFAULT_DAYS)
        out.append({"role": role, "chart": chart(view["series"], now=now, days=cs.DEFAULT_DAYS,
                                                 title=f"Task {task} in role {role}")})
    return out
