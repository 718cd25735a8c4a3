"""Callback plugin of this repository: appends one line per task result to task_log.txt in the
directory ansible-playbook runs in (the checkout)."""

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_log
type: aggregate
short_description: one line per task result in ./task_log.txt
description: Appends "<host> <task> <status>" for every task result to task_log.txt.
requirements: [enabled in ansible.cfg (callbacks_enabled)]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_log"
    CALLBACK_NEEDS_ENABLED = True

    def _log(self, result, status):
        with open("task_log.txt", "a", encoding="utf-8") as f:
            f.write(f"{result._host.get_name()} {result._task.get_name()} {status}\n")

    def v2_runner_on_ok(self, result):
        self._log(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._log(result, "failed")
