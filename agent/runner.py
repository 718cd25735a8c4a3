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
import importlib.util
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from agent import events
from agent.errors import PlanError, RunnerError
from agent.inventory import RunPlan
from agent.progress import Progress, from_runner_event

log = logging.getLogger(__name__)
PLUGIN_DIR = Path(__file__).parent / "ansible_plugins"
GATHER_PLAYBOOK = "_gather_facts.yml"  # written into each private dir when ansible.gather_subset is set


class RunMode(enum.StrEnum):
    CHECK = "check"
    APPLY = "apply"


@dataclass(frozen=True)
class RunnerSettings:
    work_dir: Path  # private data dirs are made (and removed) under here
    timeout_s: float
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    strategy: str = "linear"  # or "mitogen": mitogen_linear, falling back to linear when it cannot load
    fact_cache_dir: Path | None = None  # jsonfile fact cache; None: facts live only for one run
    fact_cache_timeout_s: float = 600.0
    gather_subset: tuple[str, ...] = ()  # gathered once (cached) before the playbooks; (): as they say
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
    respawn_failed: bool = False  # a module could not re-execute itself under another interpreter

    @property
    def ok(self) -> bool:
        return self.status == "successful"

    @property
    def failed_to_start(self) -> bool:
        """Failed before any task reported (a strategy that cannot load, a syntax error)."""
        return self.status == "failed" and not self.parsed.tasks


def _base_env(project_dir: Path, settings: RunnerSettings) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,  # pinned: no interpreter discovery
        "ANSIBLE_CALLBACK_PLUGINS": str(PLUGIN_DIR / "callback"),
        "ANSIBLE_CALLBACKS_ENABLED": "gitops_agent",
        "ANSIBLE_LOCAL_TEMP": str(settings.work_dir / "tmp"),
        "ANSIBLE_SYSTEM_WARNINGS": "False",
        "ANSIBLE_DEVEL_WARNING": "False",
    }
    if settings.fact_cache_dir is not None:  # smart: gather once, then reuse until the timeout
        env.update(ANSIBLE_GATHERING="smart", ANSIBLE_CACHE_PLUGIN="jsonfile",
                   ANSIBLE_CACHE_PLUGIN_CONNECTION=str(settings.fact_cache_dir),
                   ANSIBLE_CACHE_PLUGIN_TIMEOUT=str(int(settings.fact_cache_timeout_s)))
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


def _one_line_error(output: str, project_dir: Path) -> str:
    """Ansible's error block (`[ERROR]: ...` and its continuation lines, `Origin: file:line:col`) as
    one line: '<message> (playbooks/web.yml line 5, column 1)'. Terminal line ends (\\r\\n) and
    colour codes are dropped."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in output.splitlines()]
    message: list[str] = []
    origin = ""
    for line in lines:
        if line.startswith(("[ERROR]:", "ERROR!")) and not message:
            message.append(line.split(":", 1)[1].strip() if line.startswith("[") else line[6:].strip())
        elif message and line.startswith("Origin:"):
            origin = line.removeprefix("Origin:").strip()
            break
        elif message and line:
            message.append(line)
        elif message:
            break
    text = " ".join(message) or next((line for line in reversed(lines) if line), "no output")
    match = re.match(r"^(.*?):(\d+):(\d+)$", origin)
    if match:
        path = Path(match.group(1))
        shown = path.relative_to(project_dir) if path.is_relative_to(project_dir) else path
        text += f" ({shown} line {match.group(2)}, column {match.group(3)})"
    return text


def _syntax_check(books: tuple[Path, ...], plan: RunPlan, settings: RunnerSettings,
                  private: Path) -> str | None:
    """None when `ansible-playbook --syntax-check` loads every playbook, else its error as one line."""
    import ansible_runner

    extra_file = private / "extravars.json"
    extra_file.write_text(json.dumps(dict(settings.extra_vars)), encoding="utf-8")
    extra_file.chmod(0o600)
    tool = Path(sys.executable).parent / "ansible-playbook"
    args = ["--syntax-check", "-i", str(plan.inventory), "-e", f"@{extra_file}", *settings.vault_args,
            *(str(b) for b in books)]
    try:
        out, err, rc = ansible_runner.run_command(
            executable_cmd=str(tool), cmdline_args=args, private_data_dir=str(private),
            project_dir=str(plan.project_dir), envvars=_base_env(plan.project_dir, settings), quiet=True,
            timeout=int(max(settings.timeout_s, 1)), input_fd=None)
    except Exception as e:  # ansible-runner raises bare ConfigurationError/RuntimeError
        raise RunnerError(f"ansible-playbook --syntax-check could not run: {e}") from e
    return None if rc == 0 else _one_line_error(f"{out}\n{err}", plan.project_dir)


def syntax_errors(plan: RunPlan, settings: RunnerSettings) -> dict[str, str]:
    """role -> one-line error, for each of the plan's playbooks that Ansible cannot load (YAML errors,
    unknown modules or keywords, missing imports: `ansible-playbook --syntax-check`). Every playbook is
    checked in one run first (about 1 CPU-second, whatever their number); only when that fails is each
    checked alone, so that a broken role can be left out and the others still run."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="syntax-", dir=settings.work_dir) as tmp:
        private = Path(tmp)
        if _syntax_check(plan.playbooks, plan, settings, private) is None:
            return {}
        found = {}
        for role, book in zip(plan.roles, plan.playbooks, strict=True):
            error = _syntax_check((book,), plan, settings, private)
            if error is not None:
                found[role] = error
        return found


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


def mitogen_strategy_dir() -> Path | None:
    """The folder of mitogen's Ansible strategy plugins, or None when mitogen is not installed."""
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(next(iter(spec.submodule_search_locations))) / "plugins" / "strategy"
    return found if (found / "mitogen_linear.py").is_file() else None


def _strategy_env(strategy: str) -> dict[str, str]:
    if strategy != "mitogen":
        return {}
    plugins = mitogen_strategy_dir()
    if plugins is None:
        log.warning("ansible.strategy is mitogen but mitogen is not installed: using linear")
        return {}
    return {"ANSIBLE_STRATEGY": "mitogen_linear", "ANSIBLE_STRATEGY_PLUGINS": str(plugins)}


def _gather_playbook(private: Path, host: str, subset: tuple[str, ...]) -> Path:
    """A first play that only gathers facts (the chosen subset) into the cache; with smart gathering
    the host's own plays then reuse them instead of gathering again."""
    path = private / GATHER_PLAYBOOK
    path.write_text(json.dumps([{"name": "Gather facts", "hosts": host, "gather_facts": True,
                                 "gather_subset": list(subset), "tasks": []}]), encoding="utf-8")
    return path


def plays_gather_facts(books: tuple[Path, ...]) -> bool:
    """Whether any play in these playbooks gathers facts (gather_facts unset counts as yes; a playbook
    that imports others or cannot be read counts as yes too). No play gathering: no prologue either."""
    for book in books:
        try:
            plays = yaml.safe_load(book.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return True
        for play in plays if isinstance(plays, list) else [plays]:
            if not isinstance(play, dict) or any("import_playbook" in key for key in play):
                return True
            if str(play.get("gather_facts", True)).lower() not in ("false", "no", "0"):
                return True
    return False


def _args(plan: RunPlan, mode: RunMode, extra_file: Path, books: tuple[Path, ...],
          vault_args: list[str]) -> str:
    flags = ["--check", "--diff"] if mode is RunMode.CHECK else ["--diff"]
    # Options first, then every playbook: ansible-playbook runs several in order, each with its own
    # basedir. ansible-runner appends its single `playbook` argument after cmdline.
    args = [*flags, "-i", str(plan.inventory), "--limit", plan.host, "-e", f"@{extra_file}",
            *vault_args, *(str(b) for b in books[:-1])]
    return " ".join(shlex.quote(a) for a in args)


def run_playbooks(plan: RunPlan, mode: RunMode, settings: RunnerSettings, *,
                  cancel: Callable[[], bool], playbooks: tuple[Path, ...] | None = None,
                  progress: Progress | None = None) -> RunResult:
    """Run the plan's playbooks (or a subset) for plan.host: --check --diff, or for real with --diff.
    With ansible.strategy mitogen, a run that mitogen cannot start, or in which a module could not
    re-execute itself under another Python (Ansible's respawn: apt/dnf without their bindings, which
    mitogen does not support), is run again with linear. `progress` hears of each task as it starts
    and ends (agent.progress records; it must not raise)."""
    result = _run(plan, mode, settings, cancel=cancel, playbooks=playbooks, progress=progress)
    if settings.strategy != "mitogen" or cancel():
        return result
    if result.failed_to_start and any("mitogen" in m.lower() for m in result.parsed.messages):
        detail = "; ".join(result.parsed.messages)[-300:] or f"rc={result.rc}"
        why = f"failed before any task ran ({detail})"
    elif result.respawn_failed:
        why = "cannot run a module that re-executes itself under another Python (e.g. apt, dnf)"
    else:
        return result
    log.warning("the mitogen strategy %s; running the %s again with linear", why, mode.value)
    return _run(plan, mode, replace(settings, strategy="linear"), cancel=cancel, playbooks=playbooks,
                progress=progress)


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


def _run(plan: RunPlan, mode: RunMode, settings: RunnerSettings, *,
         cancel: Callable[[], bool], playbooks: tuple[Path, ...] | None,
         progress: Progress | None = None) -> RunResult:
    import ansible_runner

    settings.work_dir.mkdir(parents=True, exist_ok=True)
    if settings.fact_cache_dir is not None:  # facts include the environment: private to the agent
        settings.fact_cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=f"{mode.value}-", dir=settings.work_dir))
    notes_file = private / "notes.jsonl"
    env = {**_base_env(plan.project_dir, settings), **_strategy_env(settings.strategy),
           "GITOPS_AGENT_NOTES_FILE": str(notes_file)}
    extra = {**settings.extra_vars, "ansible_connection": "local",
             "ansible_python_interpreter": sys.executable}
    extra_file = private / "extravars.json"
    extra_file.write_text(json.dumps(extra), encoding="utf-8")
    extra_file.chmod(0o600)
    books = playbooks if playbooks is not None else plan.playbooks
    if settings.gather_subset and plays_gather_facts(books):
        books = (_gather_playbook(private, plan.host, settings.gather_subset), *books)
    collected: list[dict[str, Any]] = []
    _become_subreaper()

    def keep_in_memory(event: dict[str, Any]) -> bool:
        collected.append(event)
        if progress is not None:
            record = from_runner_event(event)
            if record is not None:
                progress(record)
        return False  # False: ansible-runner writes no event file for it

    started = time.monotonic()
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private), project_dir=str(plan.project_dir), playbook=str(books[-1]),
            cmdline=_args(plan, mode, extra_file, books, settings.vault_args), envvars=env, quiet=True,
            timeout=int(max(settings.timeout_s, 1)), event_handler=keep_in_memory,
            cancel_callback=cancel, suppress_env_files=True,
            fact_cache=str(settings.fact_cache_dir or private / "facts"),
        )
        parsed = events.parse(collected, host=plan.host, notes=_read_notes(notes_file),
                              project_dir=str(plan.project_dir))
        status, rc = str(runner.status), runner.rc
    except Exception as e:
        raise RunnerError(f"ansible-runner could not run the {mode.value}: {e}") from e
    finally:
        kill_leftovers()
        shutil.rmtree(private, ignore_errors=True)
    duration = time.monotonic() - started
    log.debug("ansible %s finished: status=%s rc=%s tasks=%d duration_s=%.1f strategy=%s",
              mode.value, status, rc, len(parsed.tasks), duration, env.get("ANSIBLE_STRATEGY", "linear"))
    return RunResult(mode=mode, status=status, rc=rc, parsed=parsed, duration_s=duration,
                     respawn_failed=module_respawn_failed(collected))
