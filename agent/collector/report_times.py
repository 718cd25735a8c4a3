"""The times of a report as the collector stores them. Pure functions over values.

A report's times come from its host's clock, and the collector orders and ages things by them: a host's
current state is its report with the newest `finished_at`, runs are listed and pruned by it, drift shows
"since `first_seen_at`", commits carry `committed_at`. A clock far ahead (a 2099 report) would win every
comparison for ever, and the host's state would never change again. So:

- **Ahead of the collector**: `started_at`, `finished_at`, `drift[].first_seen_at`, `pause.since` and
  `source.committed_at` later than the moment the collector received the report are stored as that
  moment. The report is kept as sent (`GET /api/v1/runs/{id}` serves it unchanged); only the columns
  that order and age things are clamped. A host whose clock runs ahead keeps reporting, ordered by arrival.
- **Before 2000-01-01**: `started_at` and `finished_at` are refused (422). A clock that was never set
  (1970) would make every report "older" than the host's last good one, so that nothing it sends would
  ever become its current state.
- `pause.until` is an expiry the operator chose: it may lie far ahead and is kept as sent.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from agent.collector.errors import InvalidReportError
from agent.report import Report, format_time

EARLIEST_RUN_TIME = datetime(2000, 1, 1, tzinfo=UTC)
CLOCK_AHEAD_WARN_S = 60.0  # a clamp beyond this is logged and counted (gitops_reports_clock_ahead_total)


def check_run_times(report: Report) -> None:
    """Refuse (422, naming the field) run times from a clock that was never set."""
    for field, value in (("started_at", report.started_at), ("finished_at", report.finished_at)):
        if value < EARLIEST_RUN_TIME:
            raise InvalidReportError(f"{field}: {format_time(value)} is before {EARLIEST_RUN_TIME:%Y-%m-%d}: "
                                     "is the host's clock set?", field)


def seconds_ahead(report: Report, received_at: datetime) -> float:
    """How far the report's finish time is ahead of the collector's clock (0 when it is not)."""
    return max(0.0, (report.finished_at - received_at).total_seconds())


def _at_most(value: datetime | None, limit: datetime) -> datetime | None:
    return None if value is None else min(value, limit)


def clamp(report: Report, received_at: datetime) -> Report:
    """The report with every ordering time later than `received_at` set to `received_at`."""
    times = [report.started_at, report.finished_at, report.source.committed_at,
             report.pause.since if report.pause else None, *(i.first_seen_at for i in report.drift)]
    if all(t is None or t <= received_at for t in times):
        return report
    finished = min(report.finished_at, received_at)
    source = replace(report.source, committed_at=_at_most(report.source.committed_at, received_at))
    drift = tuple(replace(item, first_seen_at=_at_most(item.first_seen_at, received_at))
                  for item in report.drift)
    pause = report.pause and replace(report.pause, since=_at_most(report.pause.since, received_at))
    return replace(report, started_at=min(report.started_at, finished), finished_at=finished,
                   source=source, drift=drift, pause=pause)
