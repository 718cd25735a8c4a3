"""`gitops-agent`: the composition root. Parses arguments, configures logging once, runs the command
(agent.cli_cycle: run, daemon; agent.cli_state: the others) and maps every expected failure to one line
and an exit code. Only these cli modules print."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from agent import __version__, config, preflight
from agent.cli_common import EX_CONFIG, EX_IOERR, EX_NOPERM, EX_SIGPIPE, EX_TEMPFAIL, EX_USAGE, journald
from agent.errors import AgentError, ConfigError, LockedError, StorageError, UsageError
from agent.report import Trigger

log = logging.getLogger("agent")

EPILOG = """\
exit codes: 0 in sync or corrected, 2 drift left (detect mode, --check, paused), 1 failed or error;
64 a wrong command line; 74 the disk (full, I/O error); 75 another cycle holds the lock (try again);
77 permission denied; 78 the configuration is wrong (agent.yaml, the token file, state_dir, the host
not in the inventory): nothing was applied.
configuration: --config, else $GITOPS_AGENT_CONFIG, else /etc/gitops-agent/agent.yaml. Settings:
""" + config.describe()


class _KeyValueFormatter(logging.Formatter):
    """For journald: no timestamp (journald adds one), level and logger as fields; an exception as
    `error=` (its type and message) and `at=` (file:line where it was raised), on the same line."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"level={record.levelname.lower()} logger={record.name} msg={record.getMessage()!r}"
        if record.exc_info and record.exc_info[1] is not None:
            error, tb = record.exc_info[1], record.exc_info[2]
            line += f" error={f'{type(error).__name__}: {error}'!r}"
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None:
                line += f" at={Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
        return line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now, so that log lines go above the live progress line (rich
    puts its own stderr in place while it draws)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def setup_logging(verbose: int, *, floor: int = 0) -> None:
    """The agent's own logs: warnings; -v info; -vv debug. Other libraries' (git, httpx, asyncio,
    ansible-runner): warnings only, unless -vvv. `floor` raises the default (the daemon logs info)."""
    verbose = max(verbose, floor)
    handler = _StderrHandler()
    if journald():
        handler.setFormatter(_KeyValueFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose >= 3 else logging.WARNING)
    logging.getLogger("agent").setLevel(
        logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING)


class _Parser(argparse.ArgumentParser):
    """argparse, except that a wrong command line is one line and exit 64 (argparse's own exit 2 would
    read as "drift left")."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]  # "pause" of "gitops-agent pause"; main() names the program
        raise UsageError(f"{command + ': ' if command else ''}{message} (see: {self.prog} --help)")


def _duration_arg(text: str) -> float:
    try:
        seconds = config.parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be longer than 0s")
    return seconds


def _text_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


# Each command's function, imported only when it runs (_command).
COMMANDS = {"run": "agent.cli_cycle:cmd_run", "daemon": "agent.cli_cycle:cmd_daemon",
            "status": "agent.cli_state:cmd_status", "diff": "agent.cli_state:cmd_diff",
            "pause": "agent.cli_state:cmd_pause", "resume": "agent.cli_state:cmd_resume",
            "outbox": "agent.cli_state:cmd_outbox", "doctor": "agent.cli_state:cmd_doctor",
            "enrol": "agent.cli_state:cmd_enrol", "version": "agent.cli_state:cmd_version"}


def _command(target: str) -> Callable[[argparse.Namespace], int]:
    """The command `module:function` (agent.cli_cycle, agent.cli_state), imported when it runs: --help
    and the light commands do not load what a cycle needs (httpx, rich, the daemon)."""
    module, _, name = target.partition(":")

    def run(args: argparse.Namespace) -> int:
        func: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
        return func(args)

    run.__qualname__ = run.__name__ = name
    return run


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (also the source of the man page and the shell completions)."""
    parser = _Parser(
        prog="gitops-agent", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Keep this host in the state its Git repository declares (Ansible playbooks per "
                    "inventory group), detect drift, correct it, and report every attempt.")
    parser.add_argument("--version", action="version", version=f"gitops-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging: -v info, -vv the agent's debug, -vvv other libraries' too")
    parser.add_argument("--config", metavar="PATH",
                        help="agent.yaml (default: $GITOPS_AGENT_CONFIG or /etc/gitops-agent/agent.yaml)")
    # The same options after the command (`gitops-agent status --config X -v`): other destinations, so
    # that the subcommand's defaults do not overwrite what was given before it; main() merges them.
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", dest="verbose_after", action="count", default=0,
                        help="more logging: -v info, -vv the agent's debug, -vvv other libraries' too")
    common.add_argument("--config", dest="config_after", metavar="PATH",
                        help="agent.yaml (default: $GITOPS_AGENT_CONFIG or /etc/gitops-agent/agent.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.set_defaults(func=_command(COMMANDS[name]))
        return p

    run = add("run", "one cycle now: fetch, check for drift, apply in enforce mode, recheck, "
                     "report (exit 0 in sync/corrected, 2 drift left, 1 failed, 78 refused: "
                     "a configuration problem found before Ansible ran)")
    run.add_argument("--check", action="store_true", help="detect only, this run: never apply")
    run.add_argument("--json", action="store_true", help="print the report (schema v1) as JSON")
    run.add_argument("--trigger", choices=[t.value for t in Trigger], default="manual",
                     help=argparse.SUPPRESS)  # set by the daemon for its cycles
    run.add_argument("--roles", default=None,
                     help=argparse.SUPPRESS)  # the daemon's watch checks: only these roles (a,b)
    status = add("status", "the last run (status, commit, drift count), pause, the daemon "
                           "(running, pid, next check, a cycle in progress), the outbox")
    status.add_argument("--json", action="store_true", help="machine-readable")
    diff = add("diff", "the drift of the last run, task by task, as unified diffs")
    diff.add_argument("--json", action="store_true", help="the drift items of the last run as JSON")
    add("daemon", "the scheduled loop (systemd runs this): full check every schedule.interval "
                  "at a per-host splay, new commits picked up every schedule.poll; SIGHUP "
                  "reloads the config, SIGTERM stops")
    pause = add("pause", "stop applying (and with --checks-too, checking) until resume or expiry")
    pause.add_argument("--reason", required=True, type=_text_arg,
                       help="why: shown in status and every report")
    pause.add_argument("--for", dest="duration", metavar="DURATION", type=_duration_arg,
                       help="expire by itself after this long (e.g. 30m, 4h, 2d); default: until resume")
    pause.add_argument("--checks-too", action="store_true", help="no checks either while paused")
    add("resume", "end a pause")
    outbox = add("outbox", "reports not yet delivered to the collector, and quarantined ones "
                           "(exit 2 while some wait)")
    outbox.add_argument("--flush", action="store_true", help="deliver now")
    outbox.add_argument("--json", action="store_true", help="machine-readable")
    doctor_cmd = add("doctor", "test everything a cycle needs: configuration, state_dir, token "
                               "file, the host in the inventory, each role's playbook, the Git "
                               "source, the collector and the token's validity (exit 0 all "
                               "good, 78 a local problem, 1 a network problem)")
    doctor_cmd.add_argument("--json", action="store_true", help="machine-readable")
    enrol = add("enrol", "with collector.enrol and no token file yet: ask the collector for this "
                         "host's token, or collect it once an operator has approved (exit 0 the "
                         "token is in place, 2 waiting for approval, 1 denied or failed); the "
                         "daemon and every delivery do this by themselves")
    enrol.add_argument("--json", action="store_true", help="machine-readable")
    add("version", "print the version")
    return parser


def _failure(e: BaseException) -> tuple[int, str] | None:
    """Every expected failure -> (exit code, one line). None: not expected (a bug: its traceback shows)."""
    if isinstance(e, OSError) and not isinstance(e, BrokenPipeError):
        e = preflight.os_error(e, str(e.filename or "a file the agent needs"))
    table: tuple[tuple[type[BaseException], int], ...] = (
        (UsageError, EX_USAGE), (LockedError, EX_TEMPFAIL), (StorageError, EX_IOERR),
        (preflight.PermissionDeniedError, EX_NOPERM), (ConfigError, EX_CONFIG), (AgentError, 1))
    for kind, code in table:
        if isinstance(e, kind):
            return code, str(e)
    return None


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.verbose += args.verbose_after
    args.config = args.config_after or args.config
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every expected failure is one line on stderr and an exit code (EPILOG)."""
    try:
        args = _parse(argv)
        setup_logging(args.verbose, floor=1 if args.command == "daemon" else 0)
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EX_SIGPIPE
    except KeyboardInterrupt:
        print("gitops-agent: interrupted", file=sys.stderr)
        return 130
    except (AgentError, OSError) as e:
        failure = _failure(e)
        if failure is None:
            raise
        code, message = failure
        print(f"gitops-agent: error: {message}", file=sys.stderr)
        return code
    return code


if __name__ == "__main__":
    sys.exit(main())
