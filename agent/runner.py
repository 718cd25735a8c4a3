"""The only module that imports ansible_runner. Runs the inventory graph and playbooks for one host.

Every run gets a fresh private_data_dir (ansible-runner reuses stale env/cmdline otherwise, so a check
run's --check could leak into an apply), always a cancel callback (without one ansible-runner replaces
the process's SIGTERM/SIGINT handlers), quiet output, no event files on disk (events are parsed in
memory, then the directory is removed so no diff with a secret stays behind), and a timeout.

Ansible runs as ansible-playbook would from the checkout: in it (so it reads the repo's ansible.cfg),
with the agent's settings beneath the repo's (agent.ansible_env), and with no terminal and no stdin
(agent.noninteractive), so nothing can wait for an answer. docs/ansible-semantics.md lists what differs.
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

from agent import ansible_cfg, ansible_env, events, gathering, watchpaths
from agent.ansible_env import RunEnv, Strategy
from agent.errors import PlanError, RunnerError
from agent.events import delegated_elsewhere, module_respawn_failed, unanswered_prompts
from agent.inventory import RunPlan
from agent.progress import Progress, from_runner_event

log = logging.getLogger(__name__)
PLUGIN_DIR = Path(__file__).parent / "ansible_plugins"
NONINTERACTIVE = Path(__file__).parent / "noninteractive.py"
GATHER_PLAYBOOK = gathering.PROLOGUE_PLAYBOOK  # written into each private dir when a play gathers facts
MITOGEN_STRATEGY = "gitops_mitogen_linear"  # agent/ansible_plugins/strategy: mitogen_linear, Ansible's rules
# ansible-runner drops a task's whole result (its changed flag and diffs) from the event when it is longer
# than MAX_EVENT_RES characters (700000 by default): a loop over a few big templates is enough. The agent
# raises the bound (the report is capped later, agent.report_size); past it, the gitops_agent callback still
# notes that the task changed.
MAX_EVENT_RES_CHARS = 64 * 1024 * 1024


class RunMode(enum.StrEnum):
    CHECK = "check"
    APPLY = "apply"


class RunStatus(enum.StrEnum):
    """How ansible-runner says a run ended (its `status`)."""

    SUCCESSFUL = "successful"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELED = "canceled"

    @classmethod
    def of(cls, text: str) -> RunStatus:
        """ansible-runner's status text; any other end (e.g. "error") counts as failed."""
        try:
            return cls(text)
        except ValueError:
            return cls.FAILED


@dataclass(frozen=True)
class RunnerSettings:
    work_dir: Path  # private data dirs are made (and removed) under here
    timeout_s: float
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    strategy: str = "linear"  # or "mitogen": mitogen_linear, falling back to linear when it cannot load
    fact_cache_dir: Path | None = None  # jsonfile fact caches (one folder per subset); None: no cache
    fact_cache_timeout_s: float = 600.0
    gather_subset: tuple[str, ...] = ()  # gathered too, besides what the plays ask for (agent.gathering)
    vault_password_file: Path | None = None  # passed to ansible-playbook and ansible-inventory

    @property
    def vault_args(self) -> list[str]:
        return [] if self.vault_password_file is None else ["--vault-password-file",
                                                            str(self.vault_password_file)]


@dataclass(frozen=True)
class RunResult:
    mode: RunMode
    status: RunStatus
    rc: int | None
    parsed: events.ParsedRun
    duration_s: float
    respawn_failed: bool = False  # a module could not re-execute itself under another interpreter
    strategy: str = "linear"  # the strategy the plays ran with unless they named one
    fallback: str | None = None  # why mitogen's run was dropped and the run repeated with linear
    warnings: tuple[str, ...] = ()  # where this run knowingly differs from ansible-playbook, or asked
    # The paths each of the plan's roles managed in this run (agent.watchpaths), for the daemon's watcher.
    managed: dict[str, watchpaths.RolePaths] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.SUCCESSFUL

    @property
    def failed_to_start(self) -> bool:
        """Failed before any task reported (a strategy that cannot load, a syntax error)."""
        return self.status == RunStatus.FAILED and not self.parsed.tasks


def _run_env(project_dir: Path, settings: RunnerSettings, *, cfg: ansible_cfg.AnsibleCfg,
             strategy: Strategy | None = None, fact_cache: Path | None = None) -> RunEnv:
    """The environment of one run: the repo's ansible.cfg first, the agent's settings beneath it."""
    run_env = ansible_env.build(project_dir, cfg, plugin_dir=PLUGIN_DIR, tmp_dir=settings.work_dir / "tmp",
                                fact_cache=fact_cache, fact_cache_timeout_s=settings.fact_cache_timeout_s,
                                strategy=strategy, inherited=os.environ)
    run_env.env.update(settings.env)
    return run_env


def _command(run_env: RunEnv, tool: str, args: list[str]) -> list[str]:
    """Arguments after sys.executable: `tool ARGS` started with no terminal, no stdin and without the
    variables ansible-runner passes on but the run must not have (agent.noninteractive)."""
    unset = ["--unset", ",".join(run_env.unset)] if run_env.unset else []
    return ["-I", "-S", str(NONINTERACTIVE), *unset, "--", str(Path(sys.executable).parent / tool), *args]


def inventory_graph(inventory: Path, project_dir: Path, settings: RunnerSettings) -> str:
    """`ansible-inventory --graph` for the checkout's inventory (Ansible's own parsing, run in the checkout
    as for the playbooks, so the repo's ansible.cfg applies: enabled inventory plugins, ignored files)."""
    import ansible_runner  # heavy: imported only when a cycle runs

    if not inventory.exists():
        raise PlanError(f"inventory {inventory} does not exist in the repository")
    run_env = _run_env(project_dir, settings, cfg=ansible_cfg.load(project_dir))
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    args = ["-i", str(inventory), "--graph", *settings.vault_args]
    with tempfile.TemporaryDirectory(prefix="inventory-", dir=settings.work_dir) as private:
        try:
            out, err, rc = ansible_runner.run_command(
                executable_cmd=sys.executable, cmdline_args=_command(run_env, "ansible-inventory", args),
                private_data_dir=private, project_dir=str(project_dir), envvars=run_env.env, quiet=True,
                timeout=int(max(settings.timeout_s, 1)), input_fd=None,
                host_cwd=str(project_dir),  # in the checkout: ansible-inventory reads the repo's ansible.cfg
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
    args = ["--syntax-check", "-i", str(plan.inventory), "-e", f"@{extra_file}", *settings.vault_args,
            *(str(b) for b in books)]
    run_env = _run_env(plan.project_dir, settings, cfg=ansible_cfg.load(plan.project_dir))
    try:
        out, err, rc = ansible_runner.run_command(
            executable_cmd=sys.executable, cmdline_args=_command(run_env, "ansible-playbook", args),
            private_data_dir=str(private), project_dir=str(plan.project_dir), envvars=run_env.env,
            quiet=True, timeout=int(max(settings.timeout_s, 1)), input_fd=None,
            host_cwd=str(plan.project_dir))  # in the checkout: the repo's ansible.cfg (roles_path) applies
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
        if "task_uuid" in record:
            notes.setdefault(str(record.pop("task_uuid")), {}).update(record)
    return notes


def _read_note_warnings(path: Path) -> list[str]:
    """The gitops_agent callback's run-level warnings (e.g. a connection the agent overrides)."""
    if not path.exists():
        return []
    records = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    return [str(r["warning"]) for r in records if "warning" in r]


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


def _process_command(pid: int) -> str:
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
        name = _process_command(pid)
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
    """The environment Ansible runs with: the agent's own less what the run removes, overlaid by what it
    sets (agent.ansible_env)."""
    run_env = _run_env(project_dir, settings, cfg=ansible_cfg.load(project_dir))
    return {**{k: v for k, v in os.environ.items() if k not in run_env.unset}, **run_env.env}


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


def drop_bad_facts(fact_cache_root: Path | None) -> list[str]:
    """Delete cached facts that are not a JSON object (Ansible would fail the run on them), and anything
    else under `fact_cache_root` that is not a subset folder (agent.gathering.cache_dir: one folder per
    gather_subset, one file per host). Returns the names dropped, as `subset/host` for a host's file."""
    if fact_cache_root is None or not fact_cache_root.is_dir():
        return []
    dropped = []
    for subset in fact_cache_root.iterdir():
        if subset.is_dir() and not subset.is_symlink():
            dropped += [f"{subset.name}/{name}" for name in _drop_bad_files(subset)]
        else:
            with contextlib.suppress(OSError):
                subset.unlink()
                dropped.append(subset.name)
    if dropped:
        log.warning("dropped unreadable cached facts: %s", ", ".join(dropped))
    return dropped


def _drop_bad_files(folder: Path) -> list[str]:
    dropped = []
    for path in folder.iterdir():
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
    return dropped


def mitogen_strategy_dir() -> Path | None:
    """The folder of mitogen's Ansible strategy plugins, or None when mitogen is not installed."""
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(next(iter(spec.submodule_search_locations))) / "plugins" / "strategy"
    return found if (found / "mitogen_linear.py").is_file() else None


def _agent_strategy(strategy: str) -> Strategy | None:
    """The agent's strategy plugin for ansible.strategy (None: Ansible's linear)."""
    if strategy != "mitogen":
        return None
    plugins = mitogen_strategy_dir()
    if plugins is None:
        log.warning("ansible.strategy is mitogen but mitogen is not installed: using linear")
        return None
    return Strategy(MITOGEN_STRATEGY, (PLUGIN_DIR / "strategy", plugins))


def plays_gather_facts(books: tuple[Path, ...], *, implicit: bool = True) -> bool:
    """Whether any play in these playbooks gathers facts (gather_facts unset counts as `implicit`; a
    playbook that imports others or cannot be read counts as yes). No play gathering: no prologue."""
    return bool(gathering.play_subsets(books, implicit=implicit))


def _args(plan: RunPlan, mode: RunMode, extra_file: Path, books: tuple[Path, ...],
          vault_args: list[str]) -> list[str]:
    flags = ["--check", "--diff"] if mode is RunMode.CHECK else ["--diff"]
    # Options first, then every playbook: ansible-playbook runs several in order, each with its own basedir.
    return [*flags, "-i", str(plan.inventory), "--limit", plan.host, "-e", f"@{extra_file}",
            *vault_args, *(str(b) for b in books)]


def run_playbooks(plan: RunPlan, mode: RunMode, settings: RunnerSettings, *,
                  cancel: Callable[[], bool], playbooks: tuple[Path, ...] | None = None,
                  progress: Progress | None = None) -> RunResult:
    """Run the plan's playbooks (or a subset) for plan.host: --check --diff, or for real with --diff.
    With ansible.strategy mitogen, a run that mitogen cannot start, in which a module could not
    re-execute itself under another Python (Ansible's respawn: apt/dnf without their bindings, which
    mitogen does not support), or in which a task failed with an error of mitogen's own, is run again
    with linear; the result says so (`fallback`, and a warning for the report). `progress` hears of each
    task as it starts and ends (agent.progress records; it must not raise)."""
    result = _run(plan, mode, settings, cancel=cancel, playbooks=playbooks, progress=progress)
    if result.strategy != MITOGEN_STRATEGY or cancel():
        return result
    why = _fallback_reason(result)
    if why is None:
        return result
    log.warning("the mitogen strategy %s; running the %s again with linear", why, mode.value)
    again = _run(plan, mode, replace(settings, strategy="linear"), cancel=cancel, playbooks=playbooks,
                 progress=progress)
    note = (f"ansible.strategy mitogen {why}; the {mode.value} ran again with linear, and this report is "
            "linear's [D-strategy-fallback]")
    return replace(again, fallback=why, warnings=(*again.warnings, note))


def _fallback_reason(result: RunResult) -> str | None:
    """Why a mitogen run must be repeated with linear, or None when its result stands."""
    if result.failed_to_start and any("mitogen" in m.lower() for m in result.parsed.messages):
        detail = "; ".join(result.parsed.messages)[-300:] or f"rc={result.rc}"
        return f"failed before any task ran ({detail})"
    if result.respawn_failed:
        return "cannot run a module that re-executes itself under another Python (e.g. apt, dnf)"
    for task in result.parsed.tasks:
        if task.outcome.value in ("failed", "unreachable") and _is_mitogen_error(task.message or ""):
            return f"failed task '{task.task}' with an error of its own ({_short_error(task.message or '')})"
    return None


_MITOGEN_MARKS = ("mitogen", "child start failed", "eof on stream")


def _is_mitogen_error(message: str) -> bool:
    lowered = message.lower()
    return any(mark in lowered for mark in _MITOGEN_MARKS)


def _short_error(message: str) -> str:
    """An error without mitogen's bootstrap command (a long base64 blob), bounded."""
    cut = re.split(r'\s-c\s+"?import\b', message, maxsplit=1)[0]
    return cut.strip()[:200]


def _no_output_file(private: Path) -> None:
    """ansible-runner writes Ansible's whole output (--diff included) to artifacts/<id>/stdout unless its
    setting suppress_output_file is on, and it reads its settings only from env/settings (a `settings=`
    argument is dropped when that file is missing). Without the file nothing of a diff reaches the disk,
    even when a SIGKILL skips the removal of the private dir."""
    (private / "env").mkdir(mode=0o700)
    (private / "env" / "settings").write_text(json.dumps({"suppress_output_file": True}), encoding="utf-8")


def _run(plan: RunPlan, mode: RunMode, settings: RunnerSettings, *,
         cancel: Callable[[], bool], playbooks: tuple[Path, ...] | None,
         progress: Progress | None = None) -> RunResult:
    import ansible_runner

    settings.work_dir.mkdir(parents=True, exist_ok=True)
    cfg = ansible_cfg.load(plan.project_dir)
    subset, fact_cache, implicit = _facts(plan, settings, cfg)
    run_env = _run_env(plan.project_dir, settings, cfg=cfg, strategy=_agent_strategy(settings.strategy),
                       fact_cache=fact_cache)
    private = Path(tempfile.mkdtemp(prefix=f"{mode.value}-", dir=settings.work_dir))
    notes_file = private / "notes.jsonl"
    env = {**run_env.env, "GITOPS_AGENT_NOTES_FILE": str(notes_file), "GITOPS_AGENT_HOST": plan.host,
           "MAX_EVENT_RES": str(MAX_EVENT_RES_CHARS)}
    extra = {**settings.extra_vars, "ansible_connection": "local"}  # must win: see D-connection-local
    _no_output_file(private)
    extra_file = private / "extravars.json"
    extra_file.write_text(json.dumps(extra), encoding="utf-8")
    extra_file.chmod(0o600)
    books = playbooks if playbooks is not None else plan.playbooks
    if subset is not None and plays_gather_facts(books, implicit=implicit):
        books = (gathering.write_prologue(private, plan.host, subset), *books)
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
        args = _args(plan, mode, extra_file, books, settings.vault_args)
        runner = ansible_runner.run(
            private_data_dir=str(private), project_dir=str(plan.project_dir), binary=sys.executable,
            cmdline=shlex.join(_command(run_env, "ansible-playbook", args)), envvars=env, quiet=True,
            timeout=int(max(settings.timeout_s, 1)), event_handler=keep_in_memory,
            cancel_callback=cancel, suppress_env_files=True,
            fact_cache_type="agent",  # not "jsonfile": the fact cache settings are agent.ansible_env's
        )
        parsed = events.parse(collected, host=plan.host, notes=_read_notes(notes_file),
                              project_dir=str(plan.project_dir))
        warnings = (*_read_note_warnings(notes_file), *unanswered_prompts(collected),
                    *delegated_elsewhere(collected, plan.host))
        status, rc = RunStatus.of(str(runner.status)), runner.rc
        managed = {role: found for role, found in watchpaths.managed_paths(collected, host=plan.host).items()
                   if role in plan.roles}
    except Exception as e:
        raise RunnerError(f"ansible-runner could not run the {mode.value}: {e}") from e
    finally:
        kill_leftovers()
        shutil.rmtree(private, ignore_errors=True)
    duration = time.monotonic() - started
    log.debug("ansible %s finished: status=%s rc=%s tasks=%d duration_s=%.1f strategy=%s",
              mode.value, status, rc, len(parsed.tasks), duration, run_env.strategy)
    return RunResult(mode=mode, status=status, rc=rc, parsed=parsed, duration_s=duration,
                     respawn_failed=module_respawn_failed(collected), strategy=run_env.strategy,
                     warnings=tuple(dict.fromkeys(warnings)), managed=managed)


def _facts(plan: RunPlan, settings: RunnerSettings,
           cfg: ansible_cfg.AnsibleCfg) -> tuple[gathering.Subset | None, Path | None, bool]:
    """What the prologue gathers (None: no prologue), the fact cache folder for it, and whether plays
    that do not say gather facts (Ansible's `gathering`, the repo's or the agent's `smart`)."""
    if settings.fact_cache_dir is None:
        return None, None, (cfg.get("gathering") or "implicit") != "explicit"
    gather = cfg.values.get("gathering", "smart")
    # The subset comes from all of the plan's playbooks, so check, apply and recheck share one cache.
    subset = (gathering.prologue_subset(plan.playbooks, extra=settings.gather_subset, implicit=True)
              if gather == "smart" else None)
    return subset, gathering.cache_dir(settings.fact_cache_dir, subset), gather != "explicit"
