"""Pure: raw ansible-runner event dicts -> typed task results. Nothing else sees raw events.

Diff shapes differ by module (copy/template: a list of {before, after, *_header}; lineinfile: one such
dict; file: before/after state dicts; package modules: {prepared: text}). They are normalised here into
`Diff(path, before, after)` with string values, bounded in size.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from agent.report import Diff, Stats

MAX_DIFF_CHARS = 64 * 1024
REDACTED = "[REDACTED: no_log]"
# Modules that do nothing in check mode and say so by skipping: their drift cannot be known.
CHECK_MODE_BLIND = frozenset({"command", "shell", "script", "raw", "expect"})
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Outcome(enum.StrEnum):
    OK = "ok"
    CHANGED = "changed"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class TaskResult:
    role: str  # the agent's role: the playbook the task came from (playbooks/<role>.yml)
    play: str
    task: str
    module: str
    outcome: Outcome
    diffs: tuple[Diff, ...] = ()
    message: str | None = None
    no_log: bool = False
    ignored: bool = False
    check_mode_skip: bool = False

    @property
    def key(self) -> str:
        """Identity of a task across runs (role, play, task name)."""
        return f"{self.role}\x1f{self.play}\x1f{self.task}"


@dataclass(frozen=True)
class ParsedRun:
    tasks: tuple[TaskResult, ...]
    stats: Stats
    messages: tuple[str, ...]  # error text ansible printed outside tasks (syntax errors, etc.)


def short_module(action: str) -> str:
    """'ansible.builtin.copy' -> 'copy'; 'community.general.ini_file' stays whole."""
    for prefix in ("ansible.builtin.", "ansible.legacy."):
        if action.startswith(prefix):
            return action[len(prefix):]
    return action


def _bound(text: str) -> str:
    if len(text) <= MAX_DIFF_CHARS:
        return text
    return text[:MAX_DIFF_CHARS] + f"\n[... {len(text) - MAX_DIFF_CHARS} more characters not kept]"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _bound(value)
    if isinstance(value, Mapping):
        return _bound("".join(f"{k}: {json.dumps(v)}\n" for k, v in sorted(value.items())))
    return _bound(json.dumps(value, sort_keys=True, default=str))


def _header_path(header: Any) -> str | None:
    if not isinstance(header, str) or not header:
        return None
    return header.removesuffix(" (content)").removesuffix(" (file attributes)")


def _one_diff(raw: Mapping[str, Any], fallback_path: str, target: str | None) -> Diff | None:
    if "prepared" in raw:
        return Diff(path=target or fallback_path, before=None, after=_text(raw["prepared"]))
    before, after = raw.get("before"), raw.get("after")
    if before is None and after is None:
        return None
    # copy/template put the *source* file in after_header: the managed path is dest/before_header.
    path = target or _header_path(raw.get("before_header")) or _header_path(raw.get("after_header"))
    if path is None:
        for side in (after, before):
            if isinstance(side, Mapping) and isinstance(side.get("path"), str):
                path = side["path"]
                break
    return Diff(path=path or fallback_path, before=_text(before), after=_text(after))


def normalise_diffs(raw: Any, fallback_path: str, target: str | None = None) -> tuple[Diff, ...]:
    """Any module's `diff` value -> Diff records (empty when there is nothing to show).

    `target` is the path the module manages, when its result names one (dest or path)."""
    items = raw if isinstance(raw, list) else [raw]
    diffs = [_one_diff(item, fallback_path, target) for item in items if isinstance(item, Mapping)]
    return tuple(d for d in diffs if d is not None and d.before != d.after)


def _target(res: Mapping[str, Any]) -> str | None:
    for key in ("dest", "path"):
        value = res.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _result_diffs(res: Mapping[str, Any], fallback_path: str) -> tuple[Diff, ...]:
    diffs = list(normalise_diffs(res.get("diff"), fallback_path, _target(res)))
    for item in res.get("results") or ():  # loops: one result per item
        if isinstance(item, Mapping) and item.get("changed"):
            diffs.extend(normalise_diffs(item.get("diff"), fallback_path, _target(item)))
    return tuple(diffs)


def _message(res: Mapping[str, Any]) -> str | None:
    for key in ("msg", "stderr", "reason"):
        value = res.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:2000]
    for item in res.get("results") or ():
        if isinstance(item, Mapping) and item.get("failed"):
            found = _message(item)
            if found:
                return found
    return None


def _role_of(data: Mapping[str, Any]) -> str:
    playbook = data.get("playbook")
    return PurePath(playbook).stem if isinstance(playbook, str) and playbook else ""


_OUTCOMES = {
    "runner_on_ok": Outcome.OK,
    "runner_on_failed": Outcome.FAILED,
    "runner_on_skipped": Outcome.SKIPPED,
    "runner_on_unreachable": Outcome.UNREACHABLE,
}


def task_result(event: Mapping[str, Any], notes: Mapping[str, Mapping[str, Any]]) -> TaskResult | None:
    """One runner_on_* event -> TaskResult; None for events that are not a task's final result."""
    outcome = _OUTCOMES.get(str(event.get("event")))
    data = event.get("event_data") or {}
    if outcome is None or not isinstance(data, Mapping):
        return None
    res = data.get("res") or {}
    if not isinstance(res, Mapping):
        res = {}
    note = notes.get(str(data.get("task_uuid") or ""), {})
    no_log = "censored" in res
    if outcome is Outcome.OK and (res.get("changed") or note.get("changed")):
        outcome = Outcome.CHANGED
    module = short_module(str(data.get("resolved_action") or data.get("task_action") or ""))
    task = str(data.get("task") or module)
    diffs = () if no_log else _result_diffs(res, fallback_path=task)
    if no_log and outcome is Outcome.CHANGED:
        diffs = (Diff(path=task, before=REDACTED, after=REDACTED),)
    reason = str(note.get("skip", ""))
    return TaskResult(
        role=_role_of(data), play=str(data.get("play") or ""), task=task, module=module,
        outcome=outcome, diffs=diffs,
        message=None if no_log else _message(res) if outcome is not Outcome.OK else None,
        no_log=no_log, ignored=bool(data.get("ignore_errors")),
        check_mode_skip=outcome is Outcome.SKIPPED and (
            reason == "check_mode" or (not reason and module in CHECK_MODE_BLIND)),
    )


def _stats(data: Mapping[str, Any], host: str) -> Stats:
    def count(key: str) -> int:
        per_host = data.get(key) or {}
        return int(per_host.get(host, 0)) if isinstance(per_host, Mapping) else 0

    return Stats(ok=count("ok"), changed=count("changed"), failed=count("failures"),
                 skipped=count("skipped"), unreachable=count("dark"))


def parse(events: Iterable[Mapping[str, Any]], *, host: str,
          notes: Mapping[str, Mapping[str, Any]] | None = None) -> ParsedRun:
    """A run's events, in order -> its task results, its stats (summed over playbooks) and messages.

    `notes` are the gitops_agent callback's per-task notes (skip reasons, no_log changed flags)."""
    tasks: list[TaskResult] = []
    stats = Stats()
    messages: list[str] = []
    for event in events:
        name = event.get("event")
        if name == "playbook_on_stats":
            # One ansible-playbook run keeps one tally across its playbooks: each recap is the total
            # so far, so the last one counts (adding them counted the first playbook's tasks twice).
            stats = _stats(event.get("event_data") or {}, host)
        elif name in ("verbose", "error"):
            text = _ANSI.sub("", str(event.get("stdout") or "")).strip()
            if text.startswith(("[ERROR]", "ERROR!")) or name == "error":
                messages.append(text[:2000])
            elif text.startswith("Origin:") and messages:  # where ansible found the error
                messages[-1] = f"{messages[-1]} ({text})"
        else:
            result = task_result(event, notes or {})
            if result is not None:
                tasks.append(result)
    return ParsedRun(tuple(tasks), stats, tuple(messages))
