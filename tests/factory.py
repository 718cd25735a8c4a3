"""Realistic v1 reports for tests and benchmarks (drift items with diffs, apply results, errors)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.report import (
    ApplyResult,
    Diff,
    DriftItem,
    DriftKind,
    Durations,
    ErrorItem,
    FailedTask,
    Mode,
    Phase,
    Report,
    Signature,
    SignatureStatus,
    SourceInfo,
    Stats,
    Status,
    Trigger,
)

BASE_TIME = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
COMMIT_A = "a" * 40
COMMIT_B = "b1" + "c" * 38

NGINX_CONF = "\n".join(f"    location /app{i} {{ proxy_pass http://backend{i}; }}" for i in range(30))


def drift_item(task: str = "nginx config", *, kind: DriftKind = DriftKind.CORRECTIVE, role: str = "web",
               diffs: int = 1) -> DriftItem:
    return DriftItem(
        play=f"{role} servers", task=task, role=role, module="ansible.builtin.template", kind=kind,
        diffs=tuple(Diff(path=f"/etc/nginx/conf.d/site{i}.conf", before=NGINX_CONF,
                         after=NGINX_CONF.replace("backend1", "backend-new")) for i in range(diffs)),
        first_seen_at=BASE_TIME - timedelta(hours=3),
    )


def make_report(host: str = "web01.example.com", *, status: Status = Status.IN_SYNC,
                finished_at: datetime | None = None, commit: str | None = COMMIT_A,
                drift: tuple[DriftItem, ...] | None = None, roles: tuple[str, ...] = ("web",),
                **changes: Any) -> Report:
    finished = finished_at or BASE_TIME
    if drift is None:
        drift = (drift_item(),) if status in (Status.DRIFTED, Status.CORRECTED) else ()
    failed = status in (Status.FAILED, Status.ERROR)
    fields: dict[str, Any] = {
        "run_id": str(uuid.uuid4()), "host": host, "agent_version": "0.1.0", "trigger": Trigger.SCHEDULE,
        "mode": Mode.ENFORCE, "started_at": finished - timedelta(seconds=42), "finished_at": finished,
        "source": SourceInfo(url="https://git.example.com/ops/fleet.git", ref="main", commit=commit,
                             previous_commit=None, author="Ops Person <ops@example.com>",
                             committed_at=BASE_TIME - timedelta(days=1), subject="Tune nginx workers",
                             signature=Signature(SignatureStatus.VERIFIED, "ops@example.com")),
        "phase_reached": Phase.DONE if not failed else Phase.APPLY, "status": status, "roles": roles,
        "drift": drift,
        "apply": ApplyResult(attempted=status is not Status.IN_SYNC, changed=len(drift),
                             failed_tasks=(FailedTask("restart nginx", "service failed"),) if failed else ()),
        "stats": Stats(ok=40, changed=len(drift), failed=int(failed), skipped=3),
        "errors": (ErrorItem(Phase.APPLY, "a task failed"),) if failed else (),
        "durations_s": Durations(fetch=0.4, check=20.5, apply=10.0, recheck=11.0, total=42.0),
        "interval_s": 1800, "splay_s": 300,
    }
    fields.update(changes)
    return Report(**fields)
