"""Ansible callback (runs inside ansible-playbook): notes what ansible-runner's events leave out.

- Why a task was skipped: events drop a skipped task's result, so the agent could not tell "check mode
  cannot run it" (unverifiable drift) from "its `when` was false".
- Whether a task changed: a censored (no_log) result has no `changed` key, and ansible-runner blanks a
  result larger than its event limit (MAX_EVENT_RES), so the flag is noted for every task.
- Whether a failed task was caught by a `rescue` (Ansible's recap counts it as rescued, not failed).
- Whether a task ran for real inside a --check run (`check_mode: false`).
- The loop items of the looped includes a task came from (`include_tasks` with `loop`): the events name
  the task and its file, but two iterations of one included file are otherwise the same task.
One JSON line per note is appended to $GITOPS_AGENT_NOTES_FILE; agent.runner reads it after the run.
Nothing secret is written: the task's id, a skip reason, flags, and loop labels of tasks without no_log
(they pass through the agent's redaction like every other text of a run).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible import context
from ansible.plugins.callback import CallbackBase

MAX_LABEL_CHARS = 200


def _skip_reason(result: dict[str, Any]) -> str:
    if "skip_reason" in result or "false_condition" in result:
        return "conditional"
    if "check mode" in str(result.get("msg", "")):
        return "check_mode"
    return "other"


def _label(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_LABEL_CHARS]


def include_items(task: Any) -> list[str]:
    """Labels of the loop items of the looped includes around `task`, outermost first. Ansible copies an
    include per item and puts the item (and its label) into that copy's vars, the task's ancestor."""
    labels: list[str] = []
    node = getattr(task, "_parent", None)
    for _ in range(64):  # ancestors: blocks and includes; bounded against a cycle
        if node is None:
            break
        variables = getattr(node, "vars", None)
        if isinstance(variables, dict) and "ansible_loop_var" in variables:
            loop_var = str(variables["ansible_loop_var"])
            labels.append(_label(variables.get("_ansible_item_label", variables.get(loop_var))))
        node = getattr(node, "_parent", None)
    return labels[::-1]


def rescued(task: Any) -> bool:
    """Is `task` inside the `block:` section of a block that has a `rescue:` section?"""
    child, node = task, getattr(task, "_parent", None)
    for _ in range(64):
        if node is None:
            return False
        body = getattr(node, "block", None)
        if getattr(node, "rescue", None) and isinstance(body, list) and any(
                getattr(t, "_uuid", None) == getattr(child, "_uuid", "") for t in body):
            return True
        child, node = node, getattr(node, "_parent", None)
    return False


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "gitops_agent"
    CALLBACK_NEEDS_ENABLED = True

    def _note(self, result: Any, **fields: Any) -> None:
        path = os.environ.get("GITOPS_AGENT_NOTES_FILE")
        if not path:
            return
        task = result._task
        if not task.no_log:
            items = include_items(task)
            if items:
                fields["include_items"] = items
        if context.CLIARGS.get("check") and task.check_mode is False:
            fields["real_in_check"] = True
        line = json.dumps({"task_uuid": task._uuid, **fields})
        with open(path, "a", encoding="utf-8") as f:  # noqa: PTH123
            f.write(line + "\n")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._note(result, skip=_skip_reason(result._result))

    def v2_runner_on_ok(self, result: Any) -> None:
        self._note(result, changed=bool(result._result.get("changed")))

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._note(result, failed=True, rescued=not ignore_errors and rescued(result._task))
