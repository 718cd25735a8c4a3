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

log = logging.getLogger(__name__)
PLUGIN_DIR = Path(__file__).parent / "ansible_plugins"
# ansible-runner drops a task's whole result (its changed flag and diffs) from the event when it is longer
# than MAX_EVENT_RES characters (700000 by default): a loop over a few big templates is enough. The agent
# raises the bound (the report is capped later, agent.report_size); past it, the gitops_agent callback still
# notes that the task changed.
MAX_EVENT_RES_CHARS = 64 * 1024 * 1024
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


# -- what an earlier, killed cycle left behind -----------------------------------------------------
# A SIGKILL of the agent (or a power loss) skips every `finally` above: ansible-runner's private dir stays
# under work/, and Ansible, which runs in sessions of its own, carries on without the agent and its lock.
# Every process of a cycle carries MARKER_STATE_DIR/MARKER_RUN_ID in its environment (inherited through
# fork/exec and setsid), so the next cycle finds those processes and kills them before it starts.

MARKER_STATE_DIR = "GITOPS_AGENT_STATE_DIR"
MARKER_RUN_ID = "GITOPS_AGENT_RUN_ID"


def marker_env(state_dir: Path, run_id: str) -> dict[str, str]:
    """The environment entries that mark a cycle's processes (Ansible's and Git's)."""
    return {MARKER_STATE_DIR: str(state_dir.resolve()), MARKER_RUN_ID: run_id}


def _environ(pid: int) -> dict[bytes, bytes]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.partition(b"=")[::2] for item in raw.split(b"\0") if item)


def _command(pid: int) -> str:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return text.strip()[:80] or "?"
    return "?"


def _alive(pid: int) -> bool:
    """Running (a zombie has finished: it only waits for its parent to collect it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stale_processes(state_dir: Path) -> list[int]:
    """Processes (and their descendants) marked as belonging to a cycle of `state_dir`. Call it under the
    cycle lock: then no cycle of this state_dir is running, and every one of them is a leftover."""
    wanted = str(state_dir.resolve()).encode()
    me = os.getpid()
    marked = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        with contextlib.suppress(OSError):  # gone meanwhile, or another user's process
            if pid != me and _environ(pid).get(MARKER_STATE_DIR.encode()) == wanted and _alive(pid):
                marked.append(pid)
    found = set(marked)
    for pid in marked:  # e.g. a command under sudo (become), whose environment was reset
        found.update(p for p in _descendants(pid) if p != me)
    return sorted(found)


def kill_stale(state_dir: Path, *, wait_s: float = 5.0) -> list[str]:
    """SIGKILL what earlier cycles of `state_dir` left running; one line per process killed."""
    pids = stale_processes(state_dir)
    killed = []
    for pid in pids:
        name = _command(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(f"pid {pid} ({name})")
    deadline = time.monotonic() + wait_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    if killed:
        log.warning("killed %d process(es) an earlier cycle left running: %s", len(killed), "; ".join(killed))
    return killed


def ansible_environ(project_dir: Path, settings: RunnerSettings) -> dict[str, str]:
    """The environment Ansible runs with: the agent's own, overlaid by what the runner sets."""
    return {**os.environ, **_base_env(project_dir, settings)}


def clear_work_dir(work_dir: Path) -> int:
    """Remove whatever a killed run left in work/ (ansible-runner private dirs: events, command lines;
    Ansible's local temp files under work/tmp, with module arguments). Returns how many were removed."""
    if not work_dir.is_dir():
        return 0
    leftovers = [e for e in work_dir.iterdir() if e.name != "tmp"]
    if (work_dir / "tmp").is_dir():  # ANSIBLE_LOCAL_TEMP: empty after every run that finished
        leftovers += list((work_dir / "tmp").iterdir())
    for entry in leftovers:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if leftovers:
        log.warning("removed %d leftover(s) of an earlier run from %s", len(leftovers), work_dir)
    return len(leftovers)


def drop_bad_facts(fact_cache_dir: Path | None) -> list[str]:
    """Delete cached facts that are not a JSON object (Ansible would fail the run on them); their names."""
    if fact_cache_dir is None or not fact_cache_dir.is_dir():
        return []
    dropped = []
    for path in fact_cache_dir.iterdir():
        try:
            ok = path.is_file() and isinstance(json.loads(path.read_bytes().decode("utf-8")), dict)
        except (OSError, ValueError):
            ok = False
        if not ok:
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                dropped.append(path.name)
    if dropped:
        log.warning("dropped unreadable cached facts: %s", ", ".join(dropped))
    return dropped


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
                  cancel: Callable[[], bool], playbooks: tuple[Path, ...] | None = None) -> RunResult:
    """Run the plan's playbooks (or a subset) for plan.host: --check --diff, or for real with --diff.
    With ansible.strategy mitogen, a run that mitogen cannot start, or in which a module could not
    re-execute itself under another Python (Ansible's respawn: apt/dnf without their bindings, which
    mitogen does not support), is run again with linear."""
    result = _run(plan, mode, settings, cancel=cancel, playbooks=playbooks)
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
    return _run(plan, mode, replace(settings, strategy="linear"), cancel=cancel, playbooks=playbooks)


def _no_output_file(private: Path) -> None:
    """ansible-runner writes Ansible's whole output (--diff included) to artifacts/<id>/stdout unless its
    setting suppress_output_file is on, and it reads its settings only from env/settings (a `settings=`
    argument is dropped when that file is missing). Without the file nothing of a diff reaches the disk,
    even when a SIGKILL skips the removal of the private dir."""
    (private / "env").mkdir(mode=0o700)
    (private / "env" / "settings").write_text(json.dumps({"suppress_output_file": True}), encoding="utf-8")


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
         cancel: Callable[[], bool], playbooks: tuple[Path, ...] | None) -> RunResult:
    import ansible_runner

    settings.work_dir.mkdir(parents=True, exist_ok=True)
    if settings.fact_cache_dir is not None:  # facts include the environment: private to the agent
        settings.fact_cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=f"{mode.value}-", dir=settings.work_dir))
    notes_file = private / "notes.jsonl"
    env = {**_base_env(plan.project_dir, settings), **_strategy_env(settings.strategy),
           "GITOPS_AGENT_NOTES_FILE": str(notes_file), "MAX_EVENT_RES": str(MAX_EVENT_RES_CHARS)}
    extra = {**settings.extra_vars, "ansible_connection": "local",
             "ansible_python_interpreter": sys.executable}
    _no_output_file(private)
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
