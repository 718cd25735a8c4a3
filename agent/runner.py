"""The only module that imports ansible_runner. Runs the inventory graph and playbooks for one host.

Every run gets a fresh private_data_dir (ansible-runner reuses stale env/cmdline otherwise, so a check
run's --check could leak into an apply), always a cancel callback (without one ansible-runner replaces
the process's SIGTERM/SIGINT handlers), quiet output, no event files on disk (events are parsed in
memory, then the directory is removed so no diff with a secret stays behind), and a timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import json
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import events
from agent.errors import PlanError, RunnerError
from agent.inventory import RunPlan

log = logging.getLogger(__name__)
PLUGIN_DIR = Path(__file__).parent / "ansible_plugins"


class RunMode(enum.StrEnum):
    CHECK = "check"
    APPLY = "apply"


@dataclass(frozen=True)
class RunnerSettings:
    work_dir: Path  # private data dirs are made (and removed) under here
    timeout_s: float
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    vault_password_file: Path | None = None  # passed to ansible-playbook and ansible-inventory

    @property
    def vault_args(self) -> list[str]:
        return [] if self.vault_password_file is None else ["--vault-password-file",
                                                            str(self.vault_password_file)]


@dataclass(frozen=True)
class RunResult:
    mode: RunMode
    status: str  # ansible-runner's: successful | failed | timeout | canceled
    rc: int | None
    parsed: events.ParsedRun
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.status == "successful"


def _base_env(project_dir: Path, settings: RunnerSettings) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_CALLBACK_PLUGINS": str(PLUGIN_DIR / "callback"),
        "ANSIBLE_CALLBACKS_ENABLED": "gitops_agent",
        "ANSIBLE_LOCAL_TEMP": str(settings.work_dir / "tmp"),
    }
    for name, var in (("collections", "ANSIBLE_COLLECTIONS_PATH"), ("roles", "ANSIBLE_ROLES_PATH")):
        vendored = project_dir / name
        if vendored.is_dir():  # vendored next to the playbooks: hosts never reach Galaxy
            env[var] = str(vendored)
    env.update(settings.env)
    return env


def inventory_graph(inventory: Path, project_dir: Path, settings: RunnerSettings) -> str:
    """`ansible-inventory --graph` for the checkout's inventory (Ansible's own parsing)."""
    import ansible_runner  # heavy: imported only when a cycle runs

    if not inventory.exists():
        raise PlanError(f"inventory {inventory} does not exist in the repository")
    env = _base_env(project_dir, settings)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    tool = Path(sys.executable).parent / "ansible-inventory"
    with tempfile.TemporaryDirectory(prefix="inventory-", dir=settings.work_dir) as private:
        try:
            out, err, rc = ansible_runner.run_command(
                executable_cmd=str(tool),
                cmdline_args=["-i", str(inventory), "--graph", *settings.vault_args],
                private_data_dir=private, project_dir=str(project_dir), envvars=env, quiet=True,
                timeout=int(max(settings.timeout_s, 1)), input_fd=None,
            )
        except Exception as e:  # ansible-runner raises bare ConfigurationError/RuntimeError
            raise PlanError(f"inventory {inventory}: {e}") from e
    if rc != 0 or not str(out).strip():
        text = re.sub(r"\x1b\[[0-9;]*m", "", f"{out}\n{err}").strip().splitlines() or ["no output"]
        raise PlanError(f"inventory {inventory} could not be parsed: {text[-1].strip()}")
    return str(out)


def _read_notes(path: Path) -> dict[str, dict[str, Any]]:
    """The gitops_agent callback's notes, merged per task id."""
    if not path.exists():
        return {}
    notes: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        notes.setdefault(str(record.pop("task_uuid")), {}).update(record)
    return notes


def _become_subreaper() -> None:
    """Orphans of our children re-parent to us, not to init, so leftovers can be found and killed."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, stack = [], [root]
    while stack:
        for pid in children.get(stack.pop(), ()):
            found.append(pid)
            stack.append(pid)
    return found


def kill_leftovers() -> int:
    """Kill every process Ansible left behind. ansible-runner kills only ansible-playbook's process group
    on cancel or timeout, but Ansible's task workers call setsid(), so their commands outlive it."""
    leftovers = _descendants(os.getpid())
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    if leftovers:
        log.warning("killed %d process(es) left behind by ansible", len(leftovers))
    return len(leftovers)


def run_playbooks(plan: RunPlan, mode: RunMode, settings: RunnerSettings, *,
                  cancel: Callable[[], bool], playbooks: tuple[Path, ...] | None = None) -> RunResult:
    """Run the plan's playbooks (or a subset) for plan.host: --check --diff, or for real with --diff."""
    import ansible_runner

    books = playbooks if playbooks is not None else plan.playbooks
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=f"{mode.value}-", dir=settings.work_dir))
    notes_file = private / "notes.jsonl"
    env = {**_base_env(plan.project_dir, settings), "GITOPS_AGENT_NOTES_FILE": str(notes_file)}
    extra = {**settings.extra_vars, "ansible_connection": "local",
             "ansible_python_interpreter": sys.executable}
    extra_file = private / "extravars.json"
    extra_file.write_text(json.dumps(extra), encoding="utf-8")
    extra_file.chmod(0o600)
    flags = ["--check", "--diff"] if mode is RunMode.CHECK else ["--diff"]
    # Options first, then every playbook: ansible-playbook runs several in order, each with its own
    # basedir. ansible-runner appends its single `playbook` argument after cmdline.
    args = [*flags, "-i", str(plan.inventory), "--limit", plan.host, "-e", f"@{extra_file}",
            *settings.vault_args, *(str(b) for b in books[:-1])]
    cmdline = " ".join(shlex.quote(a) for a in args)
    collected: list[dict[str, Any]] = []
    _become_subreaper()

    def keep_in_memory(event: dict[str, Any]) -> bool:
        collected.append(event)
        return False  # False: ansible-runner writes no event file for it

    started = time.monotonic()
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private), project_dir=str(plan.project_dir), playbook=str(books[-1]),
            cmdline=cmdline, envvars=env, quiet=True, timeout=int(max(settings.timeout_s, 1)),
            event_handler=keep_in_memory,
            cancel_callback=cancel, suppress_env_files=True,
        )
        parsed = events.parse(collected, host=plan.host, notes=_read_notes(notes_file))
        status, rc = str(runner.status), runner.rc
    except Exception as e:
        raise RunnerError(f"ansible-runner could not run the {mode.value}: {e}") from e
    finally:
        kill_leftovers()
        shutil.rmtree(private, ignore_errors=True)
    duration = time.monotonic() - started
    log.debug("ansible %s finished: status=%s rc=%s tasks=%d duration_s=%.1f",
              mode.value, status, rc, len(parsed.tasks), duration)
    return RunResult(mode=mode, status=status, rc=rc, parsed=parsed, duration_s=duration)


