"""`gitops-agent`: the composition root. Parses arguments, builds the objects, maps errors to exit
codes, configures logging once, and is the only module that prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from agent import __version__, config, daemon, delivery, preflight, render, textfile
from agent import report as report_codec
from agent.errors import AgentError, ConfigError, LockedError, StorageError, UsageError
from agent.fsutil import atomic_write
from agent.report import Pause, Phase, Report, Status, Trigger, exit_code
from agent.state import StateStore

# sysexits.h. The unit (packaging/systemd/gitops-agent.service) restarts on 75 and never on 78.
EX_USAGE = 64  # a wrong command line
EX_IOERR = 74  # the disk: full, over quota, failing
EX_TEMPFAIL = 75  # another cycle holds the lock: try again later
EX_NOPERM = 77  # not allowed (most commands that change state need root)
EX_CONFIG = 78  # the configuration, or what it points at, is wrong: retrying cannot help
EX_SIGPIPE = 128 + 13  # the reader of our output went away (`status | head`), as a killed C tool would

log = logging.getLogger("agent")

EPILOG = """\
exit codes: 0 in sync or corrected, 2 drift left (detect mode, --check, paused), 1 failed or error;
64 a wrong command line; 74 the disk (full, I/O error); 75 another cycle holds the lock (try again);
77 permission denied; 78 the configuration is wrong (agent.yaml, the token file, state_dir, the host
not in the inventory): nothing was applied.
configuration: --config, else $GITOPS_AGENT_CONFIG, else /etc/gitops-agent/agent.yaml. Settings:
""" + config.describe()


class _KeyValueFormatter(logging.Formatter):
    """For journald: no timestamp (journald adds one), level and logger as fields."""

    def format(self, record: logging.LogRecord) -> str:
        return f"level={record.levelname.lower()} logger={record.name} msg={record.getMessage()!r}"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now, so that log lines go above the live progress line (rich
    puts its own stderr in place while it draws)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def _journald() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM")) or not sys.stderr.isatty()


def setup_logging(verbose: int, *, floor: int = 0) -> None:
    """The agent's own logs: warnings; -v info; -vv debug. Other libraries' (git, httpx, asyncio,
    ansible-runner): warnings only, unless -vvv. `floor` raises the default (the daemon logs info)."""
    verbose = max(verbose, floor)
    handler = _StderrHandler()
    if _journald():
        handler.setFormatter(_KeyValueFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose >= 3 else logging.WARNING)
    logging.getLogger("agent").setLevel(
        logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING)


def _load(args: argparse.Namespace) -> config.AgentConfig:
    return config.load(config.config_path(args.config))


def _colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _progress_view() -> Any:
    """A progress display on stderr when it is a terminal (not under systemd); else None."""
    if _journald() or os.environ.get("TERM") == "dumb" or os.environ.get(daemon.CHILD_ENV):
        return None
    from rich.console import Console

    from agent.console import ProgressView

    return ProgressView(Console(stderr=True, highlight=False))


def _cancel_on_term() -> threading.Event:
    """SIGTERM/SIGINT during a cycle cancel Ansible (its process group) and report the run as failed."""
    cancelled = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.warning("signal %d: cancelling the cycle", signum)
        cancelled.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return cancelled


def _daemon_pid(state_dir: Path) -> int | None:
    """The running daemon's pid for this state_dir, if there is one (and we are not its child)."""
    if os.environ.get(daemon.CHILD_ENV):
        return None
    try:
        pid = int((state_dir / "daemon.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _run_through_daemon(cfg: config.AgentConfig, pid: int, check_only: bool) -> Report:
    """Ask the running daemon for a cycle (rather than fight it for the lock) and wait for its report."""
    requests = cfg.state_dir / "requests"
    request_id = uuid.uuid4().hex
    atomic_write(requests / f"{request_id}.json", json.dumps({"check_only": check_only}).encode())
    os.kill(pid, signal.SIGUSR1)
    print(f"gitops-agent: the daemon (pid {pid}) runs this cycle; waiting for it", file=sys.stderr)
    done = requests / f"{request_id}.done"
    deadline = time.monotonic() + cfg.schedule.timeout_s * 2 + 120
    while not done.exists():
        if time.monotonic() > deadline:
            raise AgentError(f"the daemon (pid {pid}) did not run the requested cycle in time")
        time.sleep(0.5)
    done.unlink(missing_ok=True)
    report = StateStore(cfg.state_dir).last_report()
    if report is None:
        raise AgentError("the daemon ran the cycle but left no report")
    return report


def _run_here(cfg: config.AgentConfig, args: argparse.Namespace, refusal: str | None) -> Report:
    from agent.cycle import Cycle, CycleOptions  # Git and the cycle: only for commands that run one

    cancelled = _cancel_on_term()
    view = None if refusal else _progress_view()
    try:
        report = Cycle(cfg, cancel=cancelled.is_set, progress=view).run(
            CycleOptions(trigger=Trigger(args.trigger), check_only=args.check, refusal=refusal))
    finally:
        if view is not None:
            view.close()
    if cfg.metrics_textfile is not None:
        atomic_write(cfg.metrics_textfile, textfile.render(report).encode(), mode=0o644)
    return report


def _delivery_warnings(cfg: config.AgentConfig, report: Report) -> list[str]:
    """A report that did not reach the collector: a warning, never a failure (the outbox keeps it)."""
    if not cfg.collector.url:
        return []
    box = delivery.outbox(cfg)
    pending = box.pending()
    if any(e.run_id == report.run_id for e in pending):
        state = delivery.last_state(cfg)
        why = f" ({state.error})" if state is not None and state.error else ""
        return [f"the report was not delivered{why}: {len(pending)} report(s) wait in the outbox for the "
                "next delivery (or: gitops-agent outbox --flush)"]
    if any(q.entry.run_id == report.run_id for q in box.quarantined()):
        return ["the collector refused the report for good: it is quarantined (see: gitops-agent outbox)"]
    return []


def _run_exit_code(report: Report) -> int:
    """0/2/1 from the status, except an error in the plan phase (the host not in the inventory, no role,
    an inventory or vault that cannot be read): that is configuration, 78, like the checks before it."""
    if report.status is Status.ERROR and report.phase_reached is Phase.PLAN:
        return EX_CONFIG
    return exit_code(report.status)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    preflight.check_state_dir(cfg.state_dir, write=True)  # without it not even an error can be reported
    refusal = preflight.local_problem(cfg)
    pid = None if refusal else _daemon_pid(cfg.state_dir)
    if pid is not None:
        report = _run_through_daemon(cfg, pid, args.check)
    else:
        report = _run_here(cfg, args, refusal)
        if refusal is None:
            delivery.flush(cfg, deadline_s=30.0)
    if args.json:
        print(report_codec.to_json(report, indent=2))
    if refusal is not None:
        raise ConfigError(f"{refusal}; nothing was run (this attempt is reported as an error, "
                          f"{delivery.destination(cfg, report.run_id)})")
    warnings = _delivery_warnings(cfg, report)
    if args.json:  # stdout is the report; people still hear the warning
        for warning in warnings:
            print(f"gitops-agent: warning: {warning}", file=sys.stderr)
    else:
        print(render.summary(report, colour=_colour()))
        if warnings:
            print(render.warning_lines(warnings, colour=_colour()))
    return _run_exit_code(report)


def _state_store(cfg: config.AgentConfig) -> StateStore:
    preflight.check_state_dir(cfg.state_dir, write=False)
    return StateStore(cfg.state_dir)


def _last(args: argparse.Namespace) -> Report:
    cfg = _load(args)
    last = _state_store(cfg).last_report()
    if last is None:
        raise AgentError(f"no run yet (no {cfg.state_dir / 'last_run.json'}); try: gitops-agent run")
    return last


def _daemon_state(cfg: config.AgentConfig) -> tuple[daemon.DaemonStatus | None, bool]:
    found = daemon.read_status(cfg.state_dir)
    return found, found is not None and daemon.pid_alive(found.pid)


def _time(value: datetime | None) -> str | None:
    return None if value is None else report_codec.format_time(value)


def _daemon_json(found: daemon.DaemonStatus | None, alive: bool) -> dict[str, Any] | None:
    if found is None:
        return None
    cycle = None if found.cycle_trigger is None else {"trigger": found.cycle_trigger,
                                                       "started_at": _time(found.cycle_started_at)}
    return {"pid": found.pid, "running": alive, "started_at": _time(found.started_at),
            "next_check_at": _time(found.next_check_at), "cycle": cycle}


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args)
    store = _state_store(cfg)
    last = store.last_report()
    now = datetime.now(UTC)
    pause = store.read_pause(now)
    waiting = len(delivery.outbox(cfg).pending())
    sent = delivery.last_state(cfg)
    found, alive = _daemon_state(cfg)
    if args.json:
        print(json.dumps({
            "last_run": report_codec.to_dict(last) if last else None,
            "daemon_pid": found.pid if found and alive else None,
            "daemon": _daemon_json(found, alive),
            "pause": report_codec.encode(pause) if pause else None,
            "outbox_depth": waiting,
            "delivery": None if sent is None else {
                "at": report_codec.format_time(sent.at), "error": sent.error, "remaining": sent.remaining},
        }, indent=2))
    else:
        print(render.status_text(last, now, pause) if last else
              f"last run: none yet (gitops-agent run)\n{render.pause_text(pause)}")
        print(render.daemon_text(
            pid=found.pid if found else None, alive=alive, started_at=found.started_at if found else None,
            next_check_at=found.next_check_at if found else None,
            cycle_trigger=found.cycle_trigger if found else None,
            cycle_started_at=found.cycle_started_at if found else None, now=now))
        print(render.delivery_text(collector=bool(cfg.collector.url), waiting=waiting,
                                   error=sent.error if sent and waiting else None,
                                   at=sent.at if sent else None, now=now))
        if last:
            print(render.summary(last, colour=_colour()))
    return exit_code(last.status) if last else 1


def cmd_diff(args: argparse.Namespace) -> int:
    last = _last(args)
    if args.json:
        data = report_codec.to_dict(last)
        print(json.dumps({"run_id": last.run_id, "status": last.status.value, "commit": last.source.commit,
                          "finished_at": data["finished_at"], "drift": data["drift"]}, indent=2))
        return 0
    if not last.drift:
        print(f"no drift in the last run ({last.status.value}, commit {(last.source.commit or '-')[:12]})")
    for item in last.drift:
        print(render.unified(item, colour=_colour()))
    return 0


def _outbox_json(box: Any, flushed: Any) -> str:
    def entry(e: Any) -> dict[str, Any]:
        return {"run_id": e.run_id, "status": e.status, "queued_at": report_codec.format_time(e.queued_at),
                "size_bytes": e.size_bytes}

    return json.dumps({
        "pending": [entry(e) for e in box.pending()],
        "quarantined": [{**entry(q.entry), "reason": q.reason} for q in box.quarantined()],
        "compacted": box.compacted_count(),
        "flush": None if flushed is None else {
            "delivered": flushed.delivered, "duplicates": flushed.duplicates,
            "quarantined": flushed.quarantined, "remaining": flushed.remaining, "error": flushed.error},
    }, indent=2)


def cmd_outbox(args: argparse.Namespace) -> int:
    cfg = _load(args)
    preflight.check_state_dir(cfg.state_dir, write=args.flush)
    box = delivery.outbox(cfg)
    result = None
    if args.flush:
        if not cfg.collector.url:
            raise ConfigError("collector.url is not set: there is nowhere to deliver to")
        result = delivery.flush(cfg, deadline_s=120.0)
        if result is not None and not args.json:
            print(f"delivered {result.delivered}, already there {result.duplicates}, "
                  f"quarantined {result.quarantined}, still waiting {result.remaining}"
                  + (f" ({result.error})" if result.error else ""))
    pending, quarantined = box.pending(), box.quarantined()
    if args.json:
        print(_outbox_json(box, result))
        return 0 if not pending else 2
    for entry in pending:
        print(f"waiting      {entry.queued_at:%Y-%m-%d %H:%M:%S}Z  {entry.status:<10} {entry.run_id}")
    for q in quarantined:
        print(f"quarantined  {q.entry.queued_at:%Y-%m-%d %H:%M:%S}Z  {q.entry.status:<10} "
              f"{q.entry.run_id}: {q.reason}")
    print(f"{len(pending)} waiting, {len(quarantined)} quarantined, {box.compacted_count()} compacted")
    return 0 if not pending else 2


def cmd_daemon(args: argparse.Namespace) -> int:
    from agent import child
    from agent.source import GitSource

    path = config.config_path(args.config)
    cfg = config.load(path)
    preflight.check_state_dir(cfg.state_dir, write=True)
    preflight.check_token_file(cfg)
    store = StateStore(cfg.state_dir, history=cfg.history)
    store.ensure()
    source = GitSource(cfg.source, cfg.state_dir)
    runner: daemon.Daemon | None = None
    last_error: list[str | None] = [None]

    def spawn(trigger: Trigger, check_only: bool) -> daemon.CycleOutcome:
        assert runner is not None
        current = runner.config
        return child.run_cycle(path, store, trigger, check_only, timeout_s=current.schedule.timeout_s,
                               stop=runner.stop, grace_s=current.schedule.stop_grace_s,
                               ping=_watchdog_ping,
                               destination=lambda r: delivery.destination(current, r.run_id))

    def flush(final: bool) -> bool:
        """Retries between cycles; the journal hears when delivery starts or stops failing, not each try."""
        assert runner is not None
        result = delivery.flush(runner.config, deadline_s=10.0, max_attempts=2 if final else 1)
        error = result.error if result is not None and not result.ok else None
        if error != last_error[0]:
            if error:
                log.warning("reports wait in the outbox: waiting=%d error=%r",
                            result.remaining if result else 0, error)
            elif last_error[0]:
                log.info("the outbox is delivered again")
            last_error[0] = error
        return result is None or result.ok

    state = store.load()
    runner = daemon.Daemon(path, cfg, spawn=spawn, probe=source.probe, flush=flush,
                           last_commit=state.last_commit)
    return runner.serve()


def _watchdog_ping() -> None:
    if daemon.watchdog_interval_s():
        daemon.sd_notify("WATCHDOG=1")


def cmd_pause(args: argparse.Namespace) -> int:
    cfg = _load(args)
    preflight.check_state_dir(cfg.state_dir, write=True)
    now = datetime.now(UTC)
    until = now + timedelta(seconds=args.duration) if args.duration else None
    who = os.environ.get("SUDO_USER") or os.environ.get("USER") or f"uid {os.getuid()}"
    pause = Pause(reason=args.reason, by=who, since=now, until=until, checks_too=args.checks_too)
    StateStore(cfg.state_dir).write_pause(pause)
    what = "checks and applies" if args.checks_too else "applies (checks go on)"
    print(f"paused {what} on {cfg.host}: {args.reason}"
          + (f", until {until:%Y-%m-%d %H:%M:%S}Z" if until else ", until `gitops-agent resume`"))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    cfg = _load(args)
    preflight.check_state_dir(cfg.state_dir, write=True)
    print("resumed" if StateStore(cfg.state_dir).clear_pause() else "was not paused")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent import doctor  # the cycle's machinery (Git, Ansible's inventory): only for this command

    try:
        cfg = _load(args)
    except ConfigError as e:
        checks = [doctor.Check("configuration", doctor.Result.FAIL, str(e), True)]
    else:
        checks = [doctor.Check("configuration", doctor.Result.OK, f"{cfg.path} (host {cfg.host})", True),
                  *doctor.run_checks(cfg)]
    if args.json:
        print(json.dumps([{"check": c.name, "result": c.result.value.lower(), "detail": c.detail,
                           "local": c.local} for c in checks], indent=2))
    else:
        for c in checks:
            print(f"{c.result.value:<4}  {c.name:<20}  {c.detail}")
    return doctor.exit_code(checks)


def cmd_version(args: argparse.Namespace) -> int:
    print(f"gitops-agent {__version__}")
    return 0


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

    def add(name: str, func: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.set_defaults(func=func)
        return p

    run = add("run", cmd_run, "one cycle now: fetch, check for drift, apply in enforce mode, recheck, "
                              "report (exit 0 in sync/corrected, 2 drift left, 1 failed, 78 refused: "
                              "a configuration problem found before Ansible ran)")
    run.add_argument("--check", action="store_true", help="detect only, this run: never apply")
    run.add_argument("--json", action="store_true", help="print the report (schema v1) as JSON")
    run.add_argument("--trigger", choices=[t.value for t in Trigger], default="manual",
                     help=argparse.SUPPRESS)  # set by the daemon for its cycles
    status = add("status", cmd_status, "the last run (status, commit, drift count), pause, the daemon "
                                       "(running, pid, next check, a cycle in progress), the outbox")
    status.add_argument("--json", action="store_true", help="machine-readable")
    diff = add("diff", cmd_diff, "the drift of the last run, task by task, as unified diffs")
    diff.add_argument("--json", action="store_true", help="the drift items of the last run as JSON")
    add("daemon", cmd_daemon, "the scheduled loop (systemd runs this): full check every schedule.interval "
                              "at a per-host splay, new commits picked up every schedule.poll; SIGHUP "
                              "reloads the config, SIGTERM stops")
    pause = add("pause", cmd_pause, "stop applying (and with --checks-too, checking) until resume or expiry")
    pause.add_argument("--reason", required=True, type=_text_arg,
                       help="why: shown in status and every report")
    pause.add_argument("--for", dest="duration", metavar="DURATION", type=_duration_arg,
                       help="expire by itself after this long (e.g. 30m, 4h, 2d); default: until resume")
    pause.add_argument("--checks-too", action="store_true", help="no checks either while paused")
    add("resume", cmd_resume, "end a pause")
    outbox = add("outbox", cmd_outbox, "reports not yet delivered to the collector, and quarantined ones "
                                       "(exit 2 while some wait)")
    outbox.add_argument("--flush", action="store_true", help="deliver now")
    outbox.add_argument("--json", action="store_true", help="machine-readable")
    doctor_cmd = add("doctor", cmd_doctor, "test everything a cycle needs: configuration, state_dir, token "
                                           "file, the host in the inventory, each role's playbook, the Git "
                                           "source, the collector and the token's validity (exit 0 all "
                                           "good, 78 a local problem, 1 a network problem)")
    doctor_cmd.add_argument("--json", action="store_true", help="machine-readable")
    add("version", cmd_version, "print the version")
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
