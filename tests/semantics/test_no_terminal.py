"""Issue 13, kind 7: nothing in a run can wait for input.

ansible-runner reads Ansible's output through a pseudo-terminal, so Ansible used to find a terminal and
wait on it: vars_prompt and pause until schedule.timeout (30 minutes), and so would any program that
asks on /dev/tty (ssh host keys, su). agent.noninteractive drops the terminal and stdin before Ansible
starts, so Ansible behaves as under cron (it says it is not prompting, and goes on), and the report says
which prompts went unanswered. One agent run (mitogen, the default) and one runner run (linear).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pexpect
import pytest

from agent import runner
from agent.events import Outcome
from agent.inventory import RunPlan
from agent.runner import NONINTERACTIVE, RunMode, RunnerSettings
from tests.conftest import APP_INVENTORY, make_repo
from tests.semantics.cases import case_repo, load

TIMEOUT_S = 120  # a run that waited for an answer would end here, as "timeout"


@pytest.mark.ansible
def test_prompts_do_not_wait_and_the_report_names_them(cli, write_config, tmp_path: Path) -> None:
    repo = case_repo(load("interactive-prompts"), tmp_path / "origin")
    config = write_config(repo.path, schedule={"timeout": f"{TIMEOUT_S}s"})
    started = time.monotonic()
    result = cli("run", "--check", "--json", "--config", str(config))
    assert time.monotonic() - started < TIMEOUT_S
    report = result.report
    assert (result.code, report["status"], report["errors"]) == (2, "drifted", []), result.err[-2000:]
    assert [(d["task"], d["diffs"][0]["after"]) for d in report["drift"]] == [("Release channel", "stable\n")]
    assert report["warnings"] == [
        "vars_prompt 'release_note' was not answered (Ansible runs with no terminal): it has no default, so "
        "Ansible set it to the text 'None' [D-no-terminal]",
        "vars_prompt 'release_channel' was not answered (Ansible runs with no terminal): it took its default "
        "'stable' [D-no-terminal]",
        "task 'Operator confirms the release' asked for input and went on without it (Ansible runs with no "
        "terminal) [D-no-terminal]",
    ]


TTY_PLAYBOOK = """\
- hosts: app
  gather_facts: false
  tasks:
    - name: A program that asks on the terminal
      ansible.builtin.shell: head -c1 </dev/tty
      check_mode: false
      ignore_errors: true

    - name: Become with a password prompt
      ansible.builtin.command: id -un
      check_mode: false
      become: true
      become_user: nobody
      become_method: ansible.builtin.su
      vars:
        ansible_become_exe: "{{ playbook_dir }}/../bin/prompting-su"
"""
PROMPTING_SU = """\
#!/bin/sh
# Asks for a password on the terminal, as su does.
printf 'Password: '
read -r answer </dev/tty || exit 1
exec "$@"
"""


@pytest.mark.ansible
def test_programs_that_ask_on_the_terminal_fail_at_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "origin", {"playbooks/app.yml": TTY_PLAYBOOK, "inventory/hosts.yml": APP_INVENTORY,
                                           "bin/prompting-su": PROMPTING_SU})
    (repo.path / "bin/prompting-su").chmod(0o755)
    plan = RunPlan(host="testhost", commit="0" * 40, roles=("app",), playbooks=(repo.path / "playbooks/app.yml",),
                   inventory=repo.path / "inventory", project_dir=repo.path)
    settings = RunnerSettings(work_dir=tmp_path / "work", timeout_s=TIMEOUT_S, strategy="linear")
    result = runner.run_playbooks(plan, RunMode.CHECK, settings, cancel=lambda: False)
    assert result.status == "failed" and result.duration_s < TIMEOUT_S
    assert [(t.task, t.outcome) for t in result.parsed.tasks] == [
        ("A program that asks on the terminal", Outcome.FAILED), ("Become with a password prompt", Outcome.FAILED)]
    assert "cannot open /dev/tty" in (result.parsed.tasks[1].message or "")


def test_the_wrapper_drops_the_terminal_and_stdin_and_keeps_the_process(tmp_path: Path) -> None:
    script = ("[ -t 0 ] && echo stdin=tty || echo stdin=none; "
              "(exec 3</dev/tty) 2>/dev/null && echo ctty=yes || echo ctty=no; "
              "[ -t 1 ] && echo stdout=tty; echo pid=$$ pgid=$(ps -o pgid= -p $$ | tr -d ' '); "
              "echo leaked=${GITOPS_TEST_LEAK:-unset} kept=${GITOPS_TEST_KEEP:-unset}")
    child = pexpect.spawn(sys.executable, ["-I", "-S", str(NONINTERACTIVE), "--unset", "GITOPS_TEST_LEAK", "--",
                                           "/bin/sh", "-c", script], encoding="utf-8", timeout=30,
                          env={"PATH": "/usr/bin:/bin", "GITOPS_TEST_LEAK": "1", "GITOPS_TEST_KEEP": "1"})
    child.expect(pexpect.EOF)
    lines = child.before.replace("\r", "").split("\n")
    assert lines[:3] == ["stdin=none", "ctty=no", "stdout=tty"]
    assert lines[3] == f"pid={child.pid} pgid={child.pid}"  # same process, same group: killable as one
    assert lines[4] == "leaked=unset kept=1"


def test_the_human_summary_lists_the_warnings() -> None:
    from agent import render
    from tests.factory import make_report

    warning = "task 'Confirm' asked for input and went on without it (Ansible runs with no terminal) [D-no-terminal]"
    assert render.summary(make_report(warnings=(warning,))).splitlines()[-1] == f"  warning: {warning}"
