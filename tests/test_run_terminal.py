"""`gitops-agent run` as an operator sees it on a terminal (a real pseudo-terminal): the phases and a live
task line while Ansible runs; and a role whose playbook Ansible cannot load fails alone, with a one-line
error, while the host's other roles still run together (a fact set by one reaches the next)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_repo

pytestmark = pytest.mark.ansible

INVENTORY = """\
all:
  children:
    base:
      children:
        web:
          hosts:
            testhost:
        db:
          hosts:
            testhost:
"""
BASE = """\
- name: Base
  hosts: base
  gather_facts: false
  tasks:
    - name: Base port
      ansible.builtin.set_fact:
        base_port: 5432
    - name: Base file
      ansible.builtin.copy:
        dest: "{{ target_root }}/base.conf"
        content: "base\\n"
        mode: "0644"
"""
DB = """\
- name: DB
  hosts: db
  gather_facts: false
  tasks:
    - name: DB config
      ansible.builtin.copy:
        dest: "{{ target_root }}/db.conf"
        content: "port={{ base_port }}\\n"
        mode: "0644"
"""
BROKEN_WEB = "- name: Web\n  hosts: web\n  tasks: [\n"


def on_terminal(args: list[str]) -> tuple[int, str]:
    """Run `gitops-agent ARGS` with stdin, stdout and stderr on a pseudo-terminal; return its output."""
    main, child = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "160", "LINES": "40", "NO_COLOR": "1"}
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *args], stdin=child, stdout=child, stderr=child,
                            cwd=ROOT, env=env, close_fds=True)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    return proc.wait(300), b"".join(chunks).decode("utf-8", "replace")


def test_progress_on_a_terminal_and_a_broken_role_fails_alone(write_config, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "origin", {"playbooks/base.yml": BASE, "playbooks/db.yml": DB,
                                           "playbooks/web.yml": BROKEN_WEB, "inventory/hosts.yml": INVENTORY})
    config = write_config(repo.path)
    code, out = on_terminal(["run", "--config", str(config)])
    text = out.replace("\r\n", "\n")
    lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).strip() for line in re.split(r"[\r\n]", text)]

    # The phases, each with its outcome, as they end; a live line per task with counts and elapsed time.
    assert any(re.match(rf"^fetch\s+{repo.head[:12]} initial\s+\d+\.\ds$", line) for line in lines), lines
    assert "verify   signature not checked" in lines
    assert any(re.match(r"^plan\s+roles: base, db\s+\d+\.\ds$", line) for line in lines), lines
    for phase, tasks in (("check", 3), ("apply", 3), ("recheck", 3)):
        assert any(re.match(rf"^{phase}\s+{tasks} tasks: .*\s\d+\.\ds$", line) for line in lines), (phase, lines)
    live = [line for line in lines if re.search(r"^\S?\s*check\s+(base|db) / \w", line)]
    assert live and any(re.search(r"\d+ tasks?: \d+ \w+.*\d+\.\ds$", line) for line in live), lines
    assert not re.search(r"\x1b\[3\dm", out), "NO_COLOR: no colours"

    # base and db ran in one ansible-playbook run (db used base's fact); web failed alone, in one line.
    assert code == 1
    assert (tmp_path / "root/db.conf").read_text() == "port=5432\n"
    assert "testhost: failed at" in out and "roles: base, db, web" in out
    error = next(line for line in lines if line.startswith("error (plan):"))
    assert re.fullmatch(r"error \(plan\): role 'web' cannot be loaded, so it did not run: YAML parsing failed: "
                        r".+ \(playbooks/web\.yml line 4, column 1\)", error), error
    assert "\\r" not in out and "\\n" not in out
    assert not (tmp_path / "state/syntax-checked").exists()  # a commit with a broken role is checked every time
