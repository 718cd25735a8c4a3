"""Pure: decide whether this cycle applies, and say why."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agent.report import Pause


@dataclass(frozen=True)
class Decision:
    apply: bool
    reason: str


def pause_active(pause: Pause | None, now: datetime) -> bool:
    return pause is not None and (pause.until is None or now < pause.until)


def decide(*, actionable_drift: int, check_failures: int, mode: str, check_only: bool,
           pause: Pause | None, now: datetime) -> Decision:
    """Apply only in enforce mode, not paused, and when the check found something to do.

    A check that failed is still applied in enforce mode: check mode cannot see what earlier tasks
    would have done (a package a later task needs), so the real run is the judge, then the recheck.
    """
    if not actionable_drift and not check_failures:
        return Decision(False, "no actionable drift")
    if check_only:
        return Decision(False, "check only (--check)")
    if mode != "enforce":
        return Decision(False, f"mode is {mode}")
    if pause_active(pause, now):
        assert pause is not None
        return Decision(False, f"paused: {pause.reason}")
    return Decision(True, f"{actionable_drift} drifted task(s), {check_failures} failed in check mode")
