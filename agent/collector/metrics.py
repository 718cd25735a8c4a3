"""In-process counters and the Prometheus text rendering of /metrics."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    """Counters of one collector process (the app's event loop updates them; no locking needed)."""

    ingested: dict[str, int] = field(default_factory=dict)  # result -> count
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0
    db_errors: int = 0
    webhooks: dict[str, int] = field(default_factory=dict)  # delivery attempt result -> count
    clock_ahead: int = 0  # reports whose finish time was ahead of this collector's clock (clamped)

    def observe_ingest(self, result: str, seconds: float) -> None:
        self.ingested[result] = self.ingested.get(result, 0) + 1
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.latency_sum_s += seconds


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, label: str, values: dict[str, int]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    if not values:
        values = {"": 0} if not label else {}
    for key, value in sorted(values.items()):
        labels = f'{{{label}="{_escape(key)}"}}' if label else ""
        lines.append(f"{name}{labels} {value}")
    return lines


def _histogram(m: Metrics) -> list[str]:
    name = "gitops_ingest_duration_seconds"
    lines = [f"# HELP {name} Time to authenticate, validate and store one report",
             f"# TYPE {name} histogram"]
    cumulative = 0
    for bound, count in zip(LATENCY_BUCKETS_S, m.latency_counts, strict=False):
        cumulative += count
        lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
    total = sum(m.latency_counts)
    lines += [f'{name}_bucket{{le="+Inf"}} {total}', f"{name}_sum {m.latency_sum_s:.6f}",
              f"{name}_count {total}"]
    return lines


def render(m: Metrics, fleet: dict[str, dict[str, int]], *, leader: bool | None = None) -> str:
    """Prometheus text exposition format (version 0.0.4). `leader`: whether this process leads (None: it
    runs no leader-only work, and the gauge is left out)."""
    lines = _family("gitops_hosts", "gauge", "Hosts by the status of their latest report", "status",
                    fleet["hosts"])
    lines += _family("gitops_hosts_stale", "gauge", "Hosts that did not report within interval+splay+grace",
                     "", fleet["stale"])
    lines += _family("gitops_drift_items", "gauge", "Current drift items across the fleet by kind", "kind",
                     fleet["drift"])
    lines += _family("gitops_reports_ingested_total", "counter",
                     "Reports received by this process, by result", "result", m.ingested)
    lines += _histogram(m)
    lines += _family("gitops_database_errors_total", "counter", "Database errors seen by this process", "",
                     {"": m.db_errors})
    lines += _family("gitops_reports_clock_ahead_total", "counter",
                     "Reports finished over a minute ahead of this collector's clock (times stored as the "
                     "receive time)", "", {"": m.clock_ahead})
    lines += _family("gitops_webhook_attempts_total", "counter",
                     "Webhook delivery attempts by this process, by resulting status", "status", m.webhooks)
    if leader is not None:
        lines += _family("gitops_collector_leader", "gauge", "1 while this process leads the collectors "
                         "(runs the notifier, heads poll and prune), else 0", "", {"": int(leader)})
    return "\n".join(lines) + "\n"
