"""Ansible callback for the differential test: every task outcome of a plain ansible-playbook run, as JSON lines.

Loaded by being on ANSIBLE_CALLBACK_PLUGINS (it needs no enabling, so the repo's own callbacks settings
stay as they are) and writing to $TASK_OUTCOMES_FILE. One line per record:

    {"record": "task", "outcome": "ok|changed|failed|skipped|unreachable", "task": NAME (else action),
     "path": "FILE:LINE", "role": ROLE|null, "action": ACTION, "gather": bool, "ignored": bool,
     "rescued": bool, "check_mode_skip": bool, "msg": TEXT|null, "target": PATH|null,
     "includes": [LABEL of each looped include around the task, outermost first],
     "items": [{"item": LABEL, "outcome": ..., "check_mode_skip": bool, "msg": ..., "target": ...}]}
    {"record": "no_hosts_matched", "play": NAME}
    {"record": "stats", "host": HOST, "ok": N, "changed": N, "failures": N, "skipped": N,
     "unreachable": N, "rescued": N, "ignored": N}

Nothing is printed: the default stdout callback still shows the run to a person.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ansible.plugins.callback import CallbackBase

GATHER_ACTIONS = frozenset({"gather_facts", "setup", "ansible.builtin.gather_facts", "ansible.builtin.setup",
                            "ansible.legacy.setup", "ansible.legacy.gather_facts"})


def _text(value: Any) -> str | None:
    return value.strip()[:2000] if isinstance(value, str) and value.strip() else None


def _message(res: dict[str, Any]) -> str | None:
    for key in ("msg", "stderr", "reason"):
        if _text(res.get(key)):
            return _text(res.get(key))
    return None


def _target(res: dict[str, Any]) -> str | None:
    """The path a file-like module manages: `dest` or `path` in its result or in the arguments it was
    invoked with (check mode often leaves them out of the result)."""
    invocation = res.get("invocation")
    args = invocation.get("module_args") if isinstance(invocation, dict) else None
    for where in (res, args if isinstance(args, dict) else {}):
        for key in ("dest", "path"):
            if isinstance(where.get(key), str) and where[key]:
                return str(where[key])
    return None


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _item(res: dict[str, Any]) -> str:
    return _label(res.get("_ansible_item_label", res.get(str(res.get("ansible_loop_var") or "item"))))


def _includes(task: Any) -> list[str]:
    """The loop items of the looped `include_tasks` a task came from: each iteration of an include is a
    copy of it holding its item among its vars."""
    labels, node = [], getattr(task, "_parent", None)
    while node is not None:
        found = getattr(node, "vars", None)
        if isinstance(found, dict) and "ansible_loop_var" in found:
            labels.append(_label(found.get("_ansible_item_label", found.get(str(found["ansible_loop_var"])))))
        node = getattr(node, "_parent", None)
    return labels[::-1]


def _outcome(res: dict[str, Any], default: str) -> str:
    if res.get("unreachable"):
        return "unreachable"
    if res.get("failed"):
        return "failed"
    if res.get("skipped"):
        return "skipped"
    return "changed" if res.get("changed") else default


def _rescued(task: Any) -> bool:
    """Whether the task sits (through any nesting) in the `block:` part of a block that has a rescue."""
    child, parent = task, getattr(task, "_parent", None)
    while parent is not None:
        if getattr(parent, "rescue", None) and any(getattr(t, "_uuid", None) == child._uuid
                                                   for t in getattr(parent, "block", None) or ()):
            return True
        child, parent = parent, getattr(parent, "_parent", None)
    return False


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_outcomes"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self) -> None:
        super().__init__()
        self._play = ""

    def _write(self, record: dict[str, Any]) -> None:
        path = os.environ.get("TASK_OUTCOMES_FILE")
        if path:
            with Path(path).open("a", encoding="utf-8") as out:
                out.write(json.dumps(record, default=str) + "\n")

    def _task(self, result: Any, outcome: str) -> None:
        task, res = result._task, dict(result._result)
        items = [{"item": _item(r), "outcome": _outcome(r, "ok"), "msg": _message(r), "target": _target(r),
                  "check_mode_skip": bool(r.get("skipped")) and "check mode" in (_message(r) or "")}
                 for r in res.get("results") or () if isinstance(r, dict)]
        role = getattr(task, "_role", None)
        msg = _message(res)
        self._write({
            "record": "task", "outcome": outcome, "task": task.name or task.action,
            "path": task.get_path(), "role": role.get_name() if role else None, "action": task.action,
            "gather": task.action in GATHER_ACTIONS, "ignored": bool(task.ignore_errors),
            "rescued": outcome == "failed" and _rescued(task),
            "check_mode_skip": outcome == "skipped" and "check mode" in (msg or ""),
            "msg": msg, "target": _target(res), "includes": _includes(task), "items": items,
        })

    def v2_runner_on_ok(self, result: Any) -> None:
        self._task(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._task(result, "failed")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._task(result, "skipped")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._task(result, "unreachable")

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._play = play.get_name()

    def v2_playbook_on_no_hosts_matched(self) -> None:
        self._write({"record": "no_hosts_matched", "play": self._play})

    def v2_playbook_on_stats(self, stats: Any) -> None:
        for host in sorted(stats.processed):
            self._write({"record": "stats", "host": host, **stats.summarize(host)})
