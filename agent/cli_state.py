"""The commands that read or change the agent's state without running a cycle: status, diff, outbox,
pause, resume, doctor, version (agent.cli parses and maps errors; this module prints)."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from agent import __version__, config, daemon, delivery, preflight, render, watchservice
from agent import report as report_codec
from agent.cli_common import colour, load
from agent.control import pid_alive
from agent.errors import AgentError, ConfigError
from agent.paths import StatePaths
from agent.report import Pause, Report, exit_code
from agent.state import StateStore


def _state_store(cfg: config.AgentConfig) -> StateStore:
    preflight.check_state_dir(cfg.state_dir, write=False)
    return StateStore(cfg.state_dir)


def _last(args: argparse.Namespace) -> Report:
    cfg = load(args)
    last = _state_store(cfg).last_report()
    if last is None:
        raise AgentError(f"no run yet (no {cfg.state_dir / 'last_run.json'}); try: gitops-agent run")
    return last


def _daemon_state(cfg: config.AgentConfig) -> tuple[daemon.DaemonStatus | None, bool]:
    found = daemon.read_status(cfg.state_dir)
    return found, found is not None and pid_alive(found.pid)


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
    cfg = load(args)
    store = _state_store(cfg)
    last = store.last_report()
    now = datetime.now(UTC)
    pause = store.read_pause(now)
    waiting = len(delivery.outbox(cfg).pending())
    sent = delivery.last_state(cfg)
    found, alive = _daemon_state(cfg)
    watching = watchservice.read_state(StatePaths(cfg.state_dir)) if alive else None
    if args.json:
        print(json.dumps({
            "last_run": report_codec.to_dict(last) if last else None,
            "daemon_pid": found.pid if found and alive else None,
            "daemon": _daemon_json(found, alive),
            "pause": report_codec.encode(pause) if pause else None,
            "outbox_depth": waiting,
            "watch": watching,  # the daemon's watch of managed paths (docs/watch.md); None: no daemon
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
        if watching is not None:
            print(watchservice.status_line(watching))
        print(render.delivery_text(collector=bool(cfg.collector.url), waiting=waiting,
                                   error=sent.error if sent and waiting else None,
                                   at=sent.at if sent else None, now=now))
        if last:
            rollout = render.rollout_text(last)
            if rollout:
                print(rollout)
            print(render.summary(last, colour=colour()))
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
        print(render.unified(item, colour=colour()))
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
    cfg = load(args)
    preflight.check_state_dir(cfg.state_dir, write=args.flush)
    box = delivery.outbox(cfg)
    result = None
    if args.flush:
        if not cfg.collector.url:
            raise ConfigError("collector.url is not set: there is nowhere to deliver to")
        result = delivery.deliver(cfg, deadline_s=120.0)
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


def cmd_pause(args: argparse.Namespace) -> int:
    cfg = load(args)
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
    cfg = load(args)
    preflight.check_state_dir(cfg.state_dir, write=True)
    print("resumed" if StateStore(cfg.state_dir).clear_pause() else "was not paused")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent import doctor  # the cycle's machinery (Git, Ansible's inventory): only for this command

    try:
        cfg = load(args)
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


def cmd_enrol(args: argparse.Namespace) -> int:
    """One round of enrolment (agent.enrolment): 0 the token file exists (now or before), 2 waiting for an
    operator's approval, 1 denied or the collector refused or could not be reached."""
    from agent import enrolment

    cfg = load(args)
    if not cfg.collector.enrol:
        raise ConfigError("collector.enrol is off: this host's token is placed by other means "
                          "(gitops-collector token create HOST)")
    preflight.check_state_dir(cfg.state_dir, write=True)
    status = enrolment.ensure_token(cfg, groups=delivery.newest_roles(delivery.outbox(cfg)))
    if args.json:
        print(json.dumps({"token_ready": status.token_ready, "request_id": status.request_id,
                          "state": status.state, "message": status.message}))
    else:
        print(status.message)
    if status.token_ready:
        return 0
    return 2 if status.state == "pending" else 1
