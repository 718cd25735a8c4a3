"""Ansible callback (runs inside ansible-playbook): notes what ansible-runner's events leave out.

- Why a task was skipped: events drop a skipped task's result, so the agent could not tell "check mode
  cannot run it" (unverifiable drift) from "its `when` was false".
- Whether a no_log task changed: its censored result in the events has no `changed` key.
- Whether the inventory or the play gives the agent's host ($GITOPS_AGENT_HOST) a connection other than
  `local`, which the agent's extra var `ansible_connection: local` overrides (a warning for the report).
One JSON line per note is appended to $GITOPS_AGENT_NOTES_FILE; agent.runner reads it after the run.
Nothing secret is written: only the task's id, a skip reason, a changed flag and a connection name.
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


def _overridden_connection(play: Any, host_name: str) -> str | None:
    """The ansible_connection that the play's variables give `host_name` without the extra vars, when it
    is set and is not `local`."""
    manager = play.get_variable_manager()
    host = manager._inventory.get_host(host_name) if manager is not None and host_name else None
    if host is None:
        return None
    extra = manager._extra_vars
    manager._extra_vars = {k: v for k, v in extra.items() if k != "ansible_connection"}
    try:
        connection = manager.get_vars(play=play, host=host, include_hostvars=False).get("ansible_connection")
    finally:
        manager._extra_vars = extra
    local = ("local", "ansible.builtin.local", "ansible.legacy.local")
    return str(connection) if connection and str(connection) not in local else None


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "gitops_agent"
    CALLBACK_NEEDS_ENABLED = True

    def _note(self, result: Any, **fields: Any) -> None:
        self._write({"task_uuid": result._task._uuid, **fields})

    def _write(self, record: dict[str, Any]) -> None:
        path = os.environ.get("GITOPS_AGENT_NOTES_FILE")
        if path:
            with open(path, "a", encoding="utf-8") as f:  # noqa: PTH123
                f.write(json.dumps(record) + "\n")

    def v2_playbook_on_play_start(self, play: Any) -> None:
        try:
            connection = _overridden_connection(play, os.environ.get("GITOPS_AGENT_HOST", ""))
        except Exception:  # a note must never break the run
            return
        if connection:
            self._write({"warning": f"the inventory or play vars give this host ansible_connection "
                                    f"'{connection}'; the agent runs it with 'local' [D-connection-local]"})

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._note(result, skip=_skip_reason(result._result))

    def v2_runner_on_ok(self, result: Any) -> None:
        if result._task.no_log:
            self._note(result, changed=bool(result._result.get("changed")))
