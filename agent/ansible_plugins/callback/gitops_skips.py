"""Ansible callback (runs inside ansible-playbook): records why each task was skipped.

ansible-runner's events leave out a skipped task's result, so the agent cannot tell "skipped because
check mode cannot run it" (unverifiable drift) from "skipped because its `when` was false". This plugin
appends one JSON line per skipped task to $GITOPS_AGENT_SKIPS_FILE; agent.runner reads it after the run.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.callback import CallbackBase


def _reason(result: dict[str, Any]) -> str:
    if "skip_reason" in result or "false_condition" in result:
        return "conditional"
    if "check mode" in str(result.get("msg", "")):
        return "check_mode"
    return "other"


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "gitops_skips"
    CALLBACK_NEEDS_ENABLED = True

    def v2_runner_on_skipped(self, result: Any) -> None:
        path = os.environ.get("GITOPS_AGENT_SKIPS_FILE")
        if not path:
            return
        line = json.dumps({"task_uuid": result._task._uuid, "reason": _reason(result._result)})
        with open(path, "a", encoding="utf-8") as f:  # noqa: PTH123
            f.write(line + "\n")
