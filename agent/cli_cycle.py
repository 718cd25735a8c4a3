"""`gitops-agent run` and `gitops-agent daemon`: the commands that run cycles (agent.cli parses and maps
errors; this module builds the objects and prints)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from agent import beacon, config, control, daemon, delivery, preflight, render, textfile, zygote
from agent import report as report_codec
from agent.cli_common import EX_CONFIG, EX_IOERR, colour, journald, load
from agent.errors import AgentError, ConfigError, StorageError
from agent.fsutil import atomic_write
from agent.paths import StatePaths
from agent.report import Phase, Report, Status, Trigger, exit_code
from agent.state import StateStore

log = logging.getLogger("agent")


def _progress_view() -> Any:
    """A progress display on stderr when it is a terminal (not under systemd); else None."""
    if journald() or os.environ.get("TERM") == "dumb" or os.environ.get(control.CHILD_ENV):
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


def _run_through_daemon(cfg: config.AgentConfig, pid: int, check_only: bool) -> Report:
    """Ask the running daemon for a cycle (rather than fight it for the lock) and wait for its report."""
    paths = StatePaths(cfg.state_dir)
    request_id = control.submit(paths, pid, check_only=check_only)
    print(f"gitops-agent: the daemon (pid {pid}) runs this cycle; waiting for it", file=sys.stderr)
    answer = control.wait(paths, request_id, pid=pid, timeout_s=cfg.schedule.timeout_s * 2 + 120)
    store = StateStore(cfg.state_dir)
    if answer.run_id is None:
        raise AgentError(f"the daemon ran the cycle ({answer.status}) but named no report of it; "
                         "see its log (journalctl -u gitops-agent)")
    report = store.report_of(answer.run_id)
    if report is None:
        raise AgentError(f"the daemon ran the cycle as run {answer.run_id} ({answer.status}), "
                         f"but its report is not in {store.history_dir}")
    return report


def _run_here(cfg: config.AgentConfig, args: argparse.Namespace,
              refusal: str | None) -> tuple[Report, list[Report]]:
    """One cycle in this process; the report, and the reports no outbox could take (out of disk: they
    are sent from memory by the delivery that follows)."""
    from agent import wiring  # Git and the cycle: only for commands that run one
    from agent.cycle import Cycle, CycleOptions

    cancelled = _cancel_on_term()
    view = None if refusal else _progress_view()
    cycle = Cycle(cfg, parts=wiring.cycle_parts(cfg), cancel=cancelled.is_set, progress=view)
    try:
        roles = tuple(r for r in args.roles.split(",") if r) if getattr(args, "roles", None) else None
        report = cycle.run(CycleOptions(trigger=Trigger(args.trigger), check_only=args.check,
                                        refusal=refusal, roles=roles))
    finally:
        if view is not None:
            view.close()
    for problem in cycle.problems:  # e.g. out of disk: what could not be written, one line each
        print(f"gitops-agent: error: {problem}", file=sys.stderr)
    if cfg.metrics_textfile is not None:
        atomic_write(cfg.metrics_textfile, textfile.render(report).encode(), mode=0o644)
    return report, cycle.unspooled


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
    cfg = load(args)
    try:
        preflight.check_state_dir(cfg.state_dir, write=True)
        disk_full = False
    except StorageError:
        if not cfg.collector.url:
            raise  # nowhere to put even an error report
        disk_full = True  # the cycle stops at its first write; its error report is delivered from memory
    refusal = preflight.local_problem(cfg)
    pid = None if refusal else control.daemon_pid(StatePaths(cfg.state_dir))
    if pid is not None:
        report = _run_through_daemon(cfg, pid, args.check)
    else:
        report, unspooled = _run_here(cfg, args, refusal)
        if refusal is None or unspooled:
            result = delivery.deliver(cfg, deadline_s=30.0, unspooled=unspooled)
            if result is not None and result.lost:
                print(f"gitops-agent: error: report(s) {', '.join(result.lost)} could not be kept on disk "
                      "or delivered: lost", file=sys.stderr)
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
        print(render.summary(report, colour=colour()))
        if warnings:
            print(render.warning_lines(warnings, colour=colour()))
    return EX_IOERR if disk_full else _run_exit_code(report)


def cmd_daemon(args: argparse.Namespace) -> int:
    from agent import child, wiring

    path = config.config_path(args.config)
    cfg = config.load(path)
    preflight.check_state_dir(cfg.state_dir, write=True)
    preflight.check_token_file(cfg)
    store = wiring.state_store(cfg)
    store.ensure()
    runner: daemon.Daemon | None = None
    last_error: list[str | None] = [None]

    def spawn(trigger: Trigger, check_only: bool,
              roles: tuple[str, ...] | None = None) -> daemon.CycleOutcome:
        assert runner is not None
        current = runner.config
        warm = runner.warm if isinstance(runner.warm, zygote.WarmStart) else None  # while the config wants it
        return child.run_cycle(path, store, trigger, check_only, timeout_s=current.schedule.timeout_s,
                               stop=runner.stop, grace_s=current.schedule.stop_grace_s,
                               ping=_watchdog_ping,
                               destination=lambda r: delivery.destination(current, r.run_id), roles=roles,
                               warm=warm if trigger is Trigger.WATCH and current.watch_warm_start else None)

    def build(current: config.AgentConfig) -> daemon.Parts:
        """The probe (over a Git source) and the redelivery (over a sender), from one configuration: built
        at start and again on every reload, so a new source.url/ref or collector is used at once."""
        preflight.check_token_file(current)
        source = wiring.git_source(current)

        def redeliver(final: bool) -> bool:
            """Retries between cycles; the journal hears when delivery starts or stops failing, not each
            try."""
            result = delivery.deliver(current, deadline_s=10.0, max_attempts=2 if final else 1)
            error = result.error if result is not None and not result.ok else None
            if error != last_error[0]:
                if error:
                    log.warning("reports wait in the outbox: waiting=%d error=%r",
                                result.remaining if result else 0, error)
                elif last_error[0]:
                    log.info("the outbox is delivered again")
                last_error[0] = error
            return result is None or result.ok

        return daemon.Parts(probe=beacon.probe_for(current, source.probe), redeliver=redeliver)

    runner = daemon.Daemon(path, cfg, spawn=spawn, build=build, last_commit=store.peek_last_commit(),
                           warm_start=_warm_start)
    return runner.serve()  # (serve stops the helper when it ends)


def _warm_start() -> zygote.WarmStart:
    """The warm start of watch checks (agent.zygote), its helper starting now. The daemon calls this while
    its configuration wants it (`watch` and `watch_warm_start` on: Daemon.follow_config)."""
    warm = zygote.WarmStart(daemon.child_env())
    warm.ensure()
    return warm


def _watchdog_ping() -> None:
    if daemon.watchdog_interval_s():
        daemon.sd_notify("WATCHDOG=1")
