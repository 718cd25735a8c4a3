"""Ansible callback (runs inside ansible-playbook): notes what ansible-runner's events leave out.

- Why a task was skipped: events drop a skipped task's result, so the agent could not tell "check mode
  cannot run it" (unverifiable drift) from "its `when` was false".
- Whether a no_log task changed: its censored result in the events has no `changed` key.
- Whether a task with a huge result changed: ansible-runner's event callback drops a result longer than
  $MAX_EVENT_RES characters altogether (changed flag and diffs), which would make that drift vanish.
One JSON line per note is appended to $GITOPS_AGENT_NOTES_FILE; agent.runner reads it after the run.
Nothing secret is written: only the task's id, a skip reason and a changed flag.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.callback import CallbackBase


def _skip_reason(result: dict[str, Any]) -> str:
    if "skip_reason" in result or "false_condition" in result:
        return "conditional"
    if "check mode" in str(result.get("msg", "")):
        return "check_mode"
    return "other"


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "gitops_agent"
    CALLBACK_NEEDS_ENABLED = True

    def _note(self, result: Any, **fields: Any) -> None:
        path = os.environ.get("GITOPS_AGENT_NOTES_FILE")
        if path:
            line = json.dumps({"task_uuid": result._task._uuid, **fields})
            with open(path, "a", encoding="utf-8") as f:  # noqa: PTH123
                f.write(line + "\n")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._note(result, skip=_skip_reason(result._result))

    def v2_runner_on_ok(self, result: Any) -> None:
        if result._task.no_log:
            self._note(result, changed=bool(result._result.get("changed")))
        elif result._result.get("changed") and len(str(result._result)) > int(os.environ.get("MAX_EVENT_RES",
                                                                                               "700000")):
            self._note(result, changed=True)
