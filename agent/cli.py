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

from agent import __version__, config, daemon, delivery, render, textfile
from agent import report as report_codec
from agent.errors import AgentError, ConfigError
from agent.fsutil import atomic_write
from agent.report import Pause, Report, Trigger, exit_code
from agent.state import StateStore

EX_CONFIG = 78  # sysexits.h: gitops-agent.service does not restart on it

log = logging.getLogger("agent")

EPILOG = """\
exit codes: 0 in sync or corrected, 2 drift left (detect mode, --check, paused), 1 failed or error;
`daemon` exits 78 (EX_CONFIG) when its configuration is invalid.
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


def setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM") or not sys.stderr.isatty():
        handler.setFormatter(_KeyValueFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)


def _load(args: argparse.Namespace) -> config.AgentConfig:
    return config.load(config.config_path(args.config))


def _colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


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


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    pid = _daemon_pid(cfg.state_dir)
    if pid is not None:
        report = _run_through_daemon(cfg, pid, args.check)
    else:
        from agent.cycle import Cycle, CycleOptions  # Git and the cycle: only for commands that run one

        cancelled = _cancel_on_term()
        cycle = Cycle(cfg, cancel=cancelled.is_set)
        report = cycle.run(CycleOptions(trigger=Trigger(args.trigger), check_only=args.check))
        for problem in cycle.problems:  # e.g. out of disk: the report is sent from memory below
            print(f"gitops-agent: error: {problem}", file=sys.stderr)
        if cfg.metrics_textfile is not None:
            atomic_write(cfg.metrics_textfile, textfile.render(report).encode(), mode=0o644)
        _deliver(cfg, deadline_s=30.0, unspooled=cycle.unspooled)
    if args.json:
        print(report_codec.to_json(report, indent=2))
    else:
        print(render.summary(report, colour=_colour()))
    return exit_code(report.status)


def _last(args: argparse.Namespace) -> Report:
    cfg = _load(args)
    last = StateStore(cfg.state_dir).last_report()
    if last is None:
        raise AgentError(f"no run yet (no {cfg.state_dir / 'last_run.json'}); try: gitops-agent run")
    return last


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args)
    store = StateStore(cfg.state_dir)
    last = _last(args)
    now = datetime.now(UTC)
    pause = store.read_pause(now)
    waiting = len(delivery.outbox(cfg).pending())
    if args.json:
        print(json.dumps({"last_run": report_codec.to_dict(last), "daemon_pid": _daemon_pid(cfg.state_dir),
                          "pause": report_codec.encode(pause) if pause else None,
                          "outbox_depth": waiting}, indent=2))
    else:
        print(render.status_text(last, now, pause))
        print(f"outbox: {waiting} report(s) waiting for the collector" if cfg.collector.url
              else "outbox: no collector configured (collector.url)")
        print(render.summary(last, colour=_colour()))
    return exit_code(last.status)


def cmd_diff(args: argparse.Namespace) -> int:
    last = _last(args)
    if not last.drift:
        print(f"no drift in the last run ({last.status.value}, commit {(last.source.commit or '-')[:12]})")
    for item in last.drift:
        print(render.unified(item, colour=_colour()))
    return 0


def _deliver(cfg: config.AgentConfig, *, deadline_s: float, max_attempts: int = 4,
             unspooled: Sequence[Report] = ()) -> bool:
    """Flush the outbox (then reports that are in no outbox); say on stderr what stays behind or is
    lost. True when nothing waits any more."""
    result = delivery.flush(cfg, deadline_s=deadline_s, max_attempts=max_attempts, unspooled=unspooled)
    if result is not None and result.lost:
        print(f"gitops-agent: error: report(s) {', '.join(result.lost)} could not be kept on disk or "
              f"delivered: lost", file=sys.stderr)
    if result is not None and not result.ok and (result.error or result.remaining):
        print(f"gitops-agent: {result.remaining} report(s) wait in the outbox for the collector: "
              f"{result.error}", file=sys.stderr)
    return result is None or result.ok


def cmd_outbox(args: argparse.Namespace) -> int:
    cfg = _load(args)
    box = delivery.outbox(cfg)
    if args.flush:
        if not cfg.collector.url:
            raise AgentError("collector.url is not set: there is nowhere to deliver to")
        result = delivery.flush(cfg, deadline_s=120.0)
        if result is not None:
            print(f"delivered {result.delivered}, already there {result.duplicates}, "
                  f"quarantined {result.quarantined}, still waiting {result.remaining}"
                  + (f" ({result.error})" if result.error else ""))
    pending, quarantined = box.pending(), box.quarantined()
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
    store = StateStore(cfg.state_dir, history=cfg.history)
    store.ensure()
    source = GitSource(cfg.source, cfg.state_dir)
    runner: daemon.Daemon | None = None

    def spawn(trigger: Trigger, check_only: bool) -> daemon.CycleOutcome:
        assert runner is not None
        return child.run_cycle(path, store, trigger, check_only, timeout_s=runner.config.schedule.timeout_s,
                               stop=runner.stop, grace_s=runner.config.schedule.stop_grace_s,
                               ping=_watchdog_ping)

    def flush(final: bool) -> bool:
        assert runner is not None
        return _deliver(runner.config, deadline_s=10.0, max_attempts=2 if final else 1)

    runner = daemon.Daemon(path, cfg, spawn=spawn, probe=source.probe, flush=flush,
                           last_commit=store.peek_last_commit())
    return runner.serve()


def _watchdog_ping() -> None:
    if daemon.watchdog_interval_s():
        daemon.sd_notify("WATCHDOG=1")


def cmd_pause(args: argparse.Namespace) -> int:
    cfg = _load(args)
    now = datetime.now(UTC)
    until = now + timedelta(seconds=config.parse_duration(args.duration)) if args.duration else None
    who = os.environ.get("SUDO_USER") or os.environ.get("USER") or f"uid {os.getuid()}"
    pause = Pause(reason=args.reason, by=who, since=now, until=until, checks_too=args.checks_too)
    store = StateStore(cfg.state_dir)
    store.ensure()
    store.write_pause(pause)
    what = "checks and applies" if args.checks_too else "applies (checks go on)"
    print(f"paused {what} on {cfg.host}: {args.reason}"
          + (f", until {until:%Y-%m-%d %H:%M:%S}Z" if until else ", until `gitops-agent resume`"))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print("resumed" if StateStore(cfg.state_dir).clear_pause() else "was not paused")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"gitops-agent {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gitops-agent", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Keep this host in the state its Git repository declares (Ansible playbooks per "
                    "inventory group), detect drift, correct it, and report every attempt.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH",
                        help="agent.yaml (default: $GITOPS_AGENT_CONFIG or /etc/gitops-agent/agent.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.set_defaults(func=func)
        return p

    run = add("run", cmd_run, "one cycle now: fetch, check for drift, apply in enforce mode, recheck, "
                              "report (exit 0 in sync/corrected, 2 drift left, 1 failed)")
    run.add_argument("--check", action="store_true", help="detect only, this run: never apply")
    run.add_argument("--json", action="store_true", help="print the report (schema v1) as JSON")
    run.add_argument("--trigger", choices=[t.value for t in Trigger], default="manual",
                     help=argparse.SUPPRESS)  # set by the daemon for its cycles
    status = add("status", cmd_status, "the last run: status, commit, drift count, pause")
    status.add_argument("--json", action="store_true", help="machine-readable")
    add("diff", cmd_diff, "the drift of the last run, task by task, as unified diffs")
    add("daemon", cmd_daemon, "the scheduled loop (systemd runs this): full check every schedule.interval "
                              "at a per-host splay, new commits picked up every schedule.poll; SIGHUP "
                              "reloads the config, SIGTERM stops")
    pause = add("pause", cmd_pause, "stop applying (and with --checks-too, checking) until resume or expiry")
    pause.add_argument("--reason", required=True, help="why: shown in status and every report")
    pause.add_argument("--for", dest="duration", metavar="DURATION",
                       help="expire by itself after this long (e.g. 4h); default: until resume")
    pause.add_argument("--checks-too", action="store_true", help="no checks either while paused")
    add("resume", cmd_resume, "end a pause")
    outbox = add("outbox", cmd_outbox, "reports not yet delivered to the collector, and quarantined ones "
                                       "(exit 2 while some wait)")
    outbox.add_argument("--flush", action="store_true", help="deliver now")
    add("version", cmd_version, "print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        code: int = args.func(args)
    except ConfigError as e:
        print(f"gitops-agent: error: {e}", file=sys.stderr)
        # The unit's RestartPreventExitStatus: restarting a daemon with a bad configuration cannot help.
        return EX_CONFIG if args.command == "daemon" else 1
    except AgentError as e:
        print(f"gitops-agent: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gitops-agent: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
