"""Pure: raw ansible-runner event dicts -> typed task results. Nothing else sees raw events.

The texts inside a result (diffs, messages, loop labels) are normalised by agent.result_text. A looped
task gives one TaskResult per loop item, read from the per-item events (runner_item_on_*): the task's
final event carries every item's result too, but ansible-runner blanks a result larger than its event
limit (MAX_EVENT_RES, 700,000 characters), which a loop over a thousand paths exceeds. A task's
identity (`TaskResult.key`) is the agent's role, the play, the Ansible role, the task's file and line,
its name and its loop item (with the items of the looped includes it came from), so the iterations of
one task file included in a loop are told apart.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import Any

from agent.report import Diff, Stats
from agent.result_text import clean_message, item_label, normalise_diffs, result_message, target

# Per task execution, at most this many loop items that changed, failed or could not be checked are
# kept one by one; the rest become one result that counts them.
MAX_ITEMS_KEPT = 100
REDACTED = "[REDACTED: no_log]"
# Modules that do nothing in check mode and say so by skipping: their drift cannot be known.
CHECK_MODE_BLIND = frozenset({"command", "shell", "script", "raw", "expect"})
# Implicit fact gathering is no evidence that a play's tasks ran for the host.
GATHER_MODULES = frozenset({"gather_facts"})
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
    ansible_role: str | None = None  # the Ansible role the task belongs to (roles/<name>), if any
    task_path: str | None = None  # "file:line", relative to the checkout when the file is in it
    item: str | None = None  # loop item label(s), outermost include first, joined by " / "
    rescued: bool = False  # failed inside a block whose rescue took over (Ansible counts it rescued)
    real_in_check: bool = False  # ran for real inside a --check run (check_mode: false)
    execution: str = ""  # this execution of the task in this run: the results of one loop share it

    @property
    def key(self) -> str:
        """Identity of a task (and loop item) across runs."""
        return "\x1f".join((self.role, self.play, self.ansible_role or "", self.task_path or "",
                            self.task, self.item or ""))

    @property
    def label(self) -> str:
        """The task as people read it: name, then the item in brackets."""
        return f"{self.task} [{self.item}]" if self.item else self.task


@dataclass(frozen=True)
class NoHostsPlay:
    """A play Ansible skipped because its `hosts:` pattern matched no host of this run."""

    role: str
    play: str
    pattern: str


@dataclass(frozen=True)
class ParsedRun:
    tasks: tuple[TaskResult, ...]
    stats: Stats  # Ansible's recap for this host (ok, changed, failed, skipped, unreachable, ...)
    messages: tuple[str, ...]  # error text ansible printed outside tasks (syntax errors, etc.)
    no_hosts: tuple[NoHostsPlay, ...] = ()
    recap_seen: bool = False  # the run reached Ansible's recap (playbook_on_stats)
    started: tuple[str, ...] = field(default=())  # roles whose playbook started, in order


def short_module(action: str) -> str:
    """'ansible.builtin.copy' -> 'copy'; 'community.general.ini_file' stays whole."""
    for prefix in ("ansible.builtin.", "ansible.legacy."):
        if action.startswith(prefix):
            return action[len(prefix):]
    return action


def _role_of(data: Mapping[str, Any]) -> str:
    playbook = data.get("playbook")
    return PurePath(playbook).stem if isinstance(playbook, str) and playbook else ""


def _relative(path: Any, project_dir: str | None) -> str | None:
    if not isinstance(path, str) or not path:
        return None
    if project_dir:
        prefix = project_dir.rstrip("/") + "/"
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


_OUTCOMES = {
    "runner_on_ok": Outcome.OK,
    "runner_on_failed": Outcome.FAILED,
    "runner_on_skipped": Outcome.SKIPPED,
    "runner_on_unreachable": Outcome.UNREACHABLE,
}
_ITEM_OUTCOMES = {
    "runner_item_on_ok": Outcome.OK,
    "runner_item_on_failed": Outcome.FAILED,
    "runner_item_on_skipped": Outcome.SKIPPED,
}


def _skipped_by_check_mode(module: str, res: Mapping[str, Any], reason: str) -> bool:
    if reason:
        return reason == "check_mode"
    if "skip_reason" in res or "false_condition" in res:
        return False
    return "check mode" in str(res.get("msg", "")) or module in CHECK_MODE_BLIND


def _base(data: Mapping[str, Any], note: Mapping[str, Any], project_dir: str | None) -> TaskResult:
    """The fields every result of one task execution shares."""
    module = short_module(str(data.get("resolved_action") or data.get("task_action") or ""))
    includes = [str(i) for i in note.get("include_items") or ()]
    role = data.get("resolved_role") or data.get("role")
    return TaskResult(
        role=_role_of(data), play=str(data.get("play") or ""), task=str(data.get("task") or module),
        module=module, outcome=Outcome.OK, ansible_role=str(role) if role else None,
        task_path=_relative(data.get("task_path"), project_dir), item=" / ".join(includes) or None,
        ignored=bool(data.get("ignore_errors")), real_in_check=bool(note.get("real_in_check")),
        rescued=bool(note.get("rescued")), execution=str(data.get("task_uuid") or ""))


def _with_item(base: TaskResult, label: str | None) -> str | None:
    if label is None:
        return base.item
    return f"{base.item} / {label}" if base.item else label


def _result(base: TaskResult, outcome: Outcome, res: Mapping[str, Any], *, reason: str = "",
            label: str | None = None, noted_changed: bool = False) -> TaskResult:
    """One task result (or one loop item's) from its `res` dict (`noted_changed`: the callback saw the
    task change, which a censored result does not say)."""
    no_log = "censored" in res
    if outcome is Outcome.OK and (res.get("changed") or noted_changed):
        outcome = Outcome.CHANGED
    diffs: tuple[Diff, ...] = ()
    if no_log and outcome is Outcome.CHANGED:
        diffs = (Diff(path=base.task, before=REDACTED, after=REDACTED),)
    elif not no_log:
        diffs = normalise_diffs(res.get("diff"), base.task, target(res))
    message = None if no_log or outcome is Outcome.OK else result_message(res)
    return replace(base, outcome=outcome, diffs=diffs, message=message, no_log=no_log,
                   item=_with_item(base, label),
                   check_mode_skip=outcome is Outcome.SKIPPED
                   and _skipped_by_check_mode(base.module, res, reason))


def _interesting(result: TaskResult) -> bool:
    return result.outcome in (Outcome.CHANGED, Outcome.FAILED, Outcome.UNREACHABLE) or result.check_mode_skip


def _bounded(base: TaskResult, results: list[TaskResult]) -> list[TaskResult]:
    """Keep every boring item (ok, skipped by a condition) and at most MAX_ITEMS_KEPT interesting ones;
    the interesting rest becomes one result per outcome that counts them."""
    kept: list[TaskResult] = []
    rest: dict[Outcome, list[TaskResult]] = {}
    shown = 0
    for result in results:
        interesting = _interesting(result)
        if interesting and shown >= MAX_ITEMS_KEPT:
            rest.setdefault(result.outcome, []).append(result)
            continue
        shown += interesting
        kept.append(result)
    for outcome, group in rest.items():
        what = "could not be checked" if outcome is Outcome.SKIPPED else outcome.value
        kept.append(replace(group[0], item=_with_item(base, "more items"), diffs=(),
                            message=f"{len(group)} more items {what}, not listed one by one "
                                    f"(the first: {group[0].item})"))
    return kept


def _item_events(res: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A looped task's per-item results from its final result, shaped like runner_item_on_* events
    (for runs whose per-item events are missing)."""
    found: list[Mapping[str, Any]] = []
    for item in res.get("results") or ():
        if isinstance(item, Mapping):
            kind = "failed" if item.get("failed") else "skipped" if item.get("skipped") else "ok"
            found.append({"event": f"runner_item_on_{kind}", "event_data": {"res": item}})
    return found


def _loop_results(base: TaskResult, outcome: Outcome, res: Mapping[str, Any],
                  items: list[Mapping[str, Any]]) -> list[TaskResult]:
    results = []
    for n, item in enumerate(items, 1):
        item_res = (item.get("event_data") or {}).get("res") or {}
        label = None if "censored" in item_res else item_label(item_res)
        results.append(_result(base, _ITEM_OUTCOMES.get(str(item.get("event")), Outcome.OK), item_res,
                               label=label or f"#{n}"))
    if outcome is Outcome.FAILED and not any(r.outcome is Outcome.FAILED for r in results):
        results.append(_result(base, outcome, res))  # the loop itself failed (e.g. its list)
    return _bounded(base, results)


def task_results(event: Mapping[str, Any], notes: Mapping[str, Mapping[str, Any]],
                 items: list[Mapping[str, Any]] | None = None,
                 project_dir: str | None = None, execution: str | None = None) -> list[TaskResult]:
    """One runner_on_* event (with the task's per-item events, if it looped) -> its results; [] for
    events that are not a task's final result. `execution` tells apart the runs of one task (a handler
    that runs twice); by default the task's id."""
    outcome = _OUTCOMES.get(str(event.get("event")))
    data = event.get("event_data") or {}
    if outcome is None or not isinstance(data, Mapping):
        return []
    res = data.get("res") or {}
    if not isinstance(res, Mapping):
        res = {}
    note = notes.get(str(data.get("task_uuid") or ""), {})
    base = _base(data, note, project_dir)
    if execution is not None:
        base = replace(base, execution=execution)
    looped = items or _item_events(res)
    if looped and outcome is not Outcome.UNREACHABLE:
        return _loop_results(base, outcome, res, looped)
    if outcome is Outcome.OK and not res and note.get("changed"):
        # ansible-runner blanked a result over its size limit: the callback's note still says changed
        return [replace(base, outcome=Outcome.CHANGED, message="the result was larger than ansible-runner's "
                        "event limit, so its diff is not available")]
    return [_result(base, outcome, res, reason=str(note.get("skip", "")),
                    noted_changed=bool(note.get("changed")))]


def task_result(event: Mapping[str, Any], notes: Mapping[str, Mapping[str, Any]]) -> TaskResult | None:
    """One runner_on_* event of a task that did not loop -> TaskResult; None for other events."""
    found = task_results(event, notes)
    return found[0] if found else None


def _stats(data: Mapping[str, Any], host: str) -> Stats:
    def count(key: str) -> int:
        per_host = data.get(key) or {}
        return int(per_host.get(host, 0)) if isinstance(per_host, Mapping) else 0

    return Stats(ok=count("ok"), changed=count("changed"), failed=count("failures"),
                 skipped=count("skipped"), unreachable=count("dark"), rescued=count("rescued"),
                 ignored=count("ignored"))


@dataclass
class _Reader:
    host: str
    notes: Mapping[str, Mapping[str, Any]]
    project_dir: str | None
    tasks: list[TaskResult] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    no_hosts: list[NoHostsPlay] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    items: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)  # task id -> final results seen so far
    stats: Stats = field(default_factory=Stats)
    recap_seen: bool = False

    def read(self, event: Mapping[str, Any]) -> None:
        name = str(event.get("event"))
        data = event.get("event_data") or {}
        if not isinstance(data, Mapping):
            data = {}
        if name == "playbook_on_stats":
            # One ansible-playbook run keeps one tally across its playbooks: each recap is the total
            # so far, so the last one counts (adding them counted the first playbook's tasks twice).
            self.stats, self.recap_seen = _stats(data, self.host), True
        elif name == "playbook_on_start":
            self.started.append(_role_of(data))
        elif name == "playbook_on_no_hosts_matched":
            self.no_hosts.append(NoHostsPlay(role=_role_of(data), play=str(data.get("play") or ""),
                                             pattern=str(data.get("play_pattern") or "")))
        elif name in ("verbose", "error"):
            self._message(name, _ANSI.sub("", str(event.get("stdout") or "")).strip())
        elif name in _ITEM_OUTCOMES:
            if data.get("host") in (None, self.host):
                self.items.setdefault(str(data.get("task_uuid") or ""), []).append(event)
        elif name in _OUTCOMES and data.get("host") in (None, self.host):
            uuid = str(data.get("task_uuid") or "")
            self.runs[uuid] = self.runs.get(uuid, 0) + 1
            self.tasks.extend(task_results(event, self.notes, self.items.pop(uuid, None), self.project_dir,
                                           execution=f"{uuid}#{self.runs[uuid]}"))

    def _message(self, name: str, text: str) -> None:
        if text.startswith(("[ERROR]", "ERROR!")) or name == "error":
            self.messages.append(clean_message(text))
        elif text.startswith("Origin:") and self.messages:  # where ansible found the error
            self.messages[-1] = f"{self.messages[-1]} ({text})"


def parse(events: Iterable[Mapping[str, Any]], *, host: str,
          notes: Mapping[str, Mapping[str, Any]] | None = None,
          project_dir: str | None = None) -> ParsedRun:
    """A run's events, in order -> its task results, its recap for `host`, and what else it said.

    `notes` are the gitops_agent callback's per-task notes (skip reasons, changed flags, rescues, loop
    items of includes); `project_dir` (the checkout) makes task paths relative to it."""
    reader = _Reader(host=host, notes=notes or {}, project_dir=project_dir)
    for event in events:
        reader.read(event)
    return ParsedRun(tuple(reader.tasks), reader.stats, tuple(reader.messages), tuple(reader.no_hosts),
                     reader.recap_seen, tuple(reader.started))


# -- run-level facts (not task results) from the raw events -------------------------------------

def module_respawn_failed(raw_events: list[dict[str, Any]]) -> bool:
    """Did a task fail because its module could not respawn (re-execute under another interpreter)?"""
    for event in raw_events:
        if event.get("event") != "runner_on_failed":
            continue
        res = (event.get("event_data") or {}).get("res") or {}
        stderr = res.get("module_stderr") if isinstance(res, dict) else None
        if isinstance(stderr, str) and "respawn" in stderr:
            return True
    return False


def unanswered_prompts(raw_events: list[dict[str, Any]]) -> list[str]:
    """Prompts of the run that nobody answered (Ansible runs without a terminal): vars_prompt variables,
    and tasks that asked for input (`pause` without a duration). Ansible goes on, as it does under cron."""
    found = []
    for event in raw_events:
        data = event.get("event_data") or {}
        if event.get("event") == "playbook_on_vars_prompt":
            name, default = data.get("varname"), data.get("default")
            outcome = (f"it took its default {default!r}" if default is not None
                       else "it has no default, so Ansible set it to the text 'None'")
            found.append(f"vars_prompt '{name}' was not answered (Ansible runs with no terminal): {outcome} "
                         "[D-no-terminal]")
        elif str(event.get("event")).startswith("runner_on_") and _asked_for_input(data.get("res")):
            found.append(f"task '{data.get('task')}' asked for input and went on without it (Ansible runs "
                         "with no terminal) [D-no-terminal]")
    return found


def delegated_elsewhere(raw_events: list[dict[str, Any]], host: str) -> list[str]:
    """Tasks delegated to another host (delegate_to), which the agent's ansible_connection=local ran on
    this host instead (D-connection-local)."""
    found = []
    local = {"localhost", "127.0.0.1", "::1", host}
    for event in raw_events:
        data = event.get("event_data") or {}
        res = data.get("res")
        delegated = res.get("_ansible_delegated_vars") if isinstance(res, dict) else None
        target = delegated.get("ansible_host") if isinstance(delegated, dict) else None
        if str(event.get("event")).startswith("runner_on_") and target and str(target) not in local:
            found.append(f"task '{data.get('task')}' is delegated to {target}; with the agent's "
                         "ansible_connection 'local' it ran on this host [D-connection-local]")
    return found


def _asked_for_input(res: Any) -> bool:
    warnings = res.get("warnings") if isinstance(res, dict) else None
    return isinstance(warnings, list) and any("not interactive" in str(w) for w in warnings)
