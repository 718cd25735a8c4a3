"""Pure: a report -> Prometheus text for node_exporter's textfile collector (`metrics_textfile`)."""

from __future__ import annotations

from agent.report import DriftKind, Report, Status


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in labels.items())
    return "{" + inner + "}"


def render(report: Report) -> str:
    host = report.host
    lines = [
        "# HELP gitops_agent_last_run_timestamp_seconds When the last cycle finished.",
        "# TYPE gitops_agent_last_run_timestamp_seconds gauge",
        f"gitops_agent_last_run_timestamp_seconds{_labels(host=host)} {report.finished_at.timestamp():.3f}",
        "# HELP gitops_agent_last_run_status 1 for the status of the last cycle, 0 for the others.",
        "# TYPE gitops_agent_last_run_status gauge",
    ]
    lines += [f"gitops_agent_last_run_status{_labels(host=host, status=s.value)} {int(report.status is s)}"
              for s in Status]
    lines += ["# HELP gitops_agent_drift_items Drift items found by the last cycle, by kind.",
              "# TYPE gitops_agent_drift_items gauge"]
    lines += [f"gitops_agent_drift_items{_labels(host=host, kind=k.value)} "
              f"{sum(1 for d in report.drift if d.kind is k)}" for k in DriftKind]
    lines += ["# HELP gitops_agent_last_run_duration_seconds Time spent in each phase of the last cycle.",
              "# TYPE gitops_agent_last_run_duration_seconds gauge"]
    for phase, value in vars(report.durations_s).items():
        if value is not None:
            labels = _labels(host=host, phase=phase)
            lines.append(f"gitops_agent_last_run_duration_seconds{labels} {value:.3f}")
    failed = len(report.apply.failed_tasks) if report.apply else 0
    info = _labels(host=host, commit=report.source.commit or "", version=report.agent_version)
    lines += [
        "# HELP gitops_agent_failed_tasks Tasks that failed in the last apply.",
        "# TYPE gitops_agent_failed_tasks gauge",
        f"gitops_agent_failed_tasks{_labels(host=host)} {failed}",
        "# HELP gitops_agent_paused 1 while applies are paused.",
        "# TYPE gitops_agent_paused gauge",
        f"gitops_agent_paused{_labels(host=host)} {int(report.pause is not None)}",
        "# HELP gitops_agent_info The commit the last cycle ran.",
        "# TYPE gitops_agent_info gauge",
        f"gitops_agent_info{info} 1",
    ]
    if report.watch is not None:  # the daemon watches managed paths (docs/watch.md)
        w = report.watch
        lines += [
            "# HELP gitops_agent_watch_paths Managed paths the daemon watches, and those it cannot "
            "(past the inotify limits: scheduled checks only).",
            "# TYPE gitops_agent_watch_paths gauge",
            f"gitops_agent_watch_paths{_labels(host=host, state='watched')} {w.watched}",
            f"gitops_agent_watch_paths{_labels(host=host, state='unwatched')} {w.unwatched}",
            "# HELP gitops_agent_watch_contested_paths Managed paths another writer keeps changing back.",
            "# TYPE gitops_agent_watch_contested_paths gauge",
            f"gitops_agent_watch_contested_paths{_labels(host=host)} {len(w.contested)}",
        ]
    return "\n".join(lines) + "\n"
