"""`gitops-agent daemon`: the scheduled loop that runs on every host, for years.

- a full drift check every schedule.interval, at a fixed per-host offset (splay) derived from the host
  name, so a fleet spreads the same way every time;
- a cheap probe for new commits every schedule.poll (`git ls-remote`); a new commit runs a cycle at once;
- a failed cycle is retried at the interval, backing off up to 4 intervals; a newer commit runs at once;
- a failure of the loop itself is retried after poll, 2x, 4x ... up to one interval (never a hot loop),
  and the watchdog is pinged only after an iteration that went through;
- every cycle runs in a child process (`gitops-agent run`), so Ansible never grows the daemon, and a
  cycle past schedule.timeout is stopped: the child cancels Ansible (its process group), a backstop kills
  the child's group;
- SIGTERM/SIGINT: stop (the running cycle gets schedule.stop_grace to finish, then is cancelled);
  SIGHUP: reload the config and rebuild the probe (source) and redelivery (sender) from it (an invalid
  one, or one that moves state_dir, is refused, the old one kept);
  SIGUSR1: look at requests from `gitops-agent run` (the protocol: agent.control);
- systemd: READY=1, WATCHDOG=1 pings, STATUS= lines (Type=notify);
- one log line per cycle (trigger, commit, status, drift by kind, changes, duration, where the report
  went), and `state_dir/daemon.json` (pid, next full check, the cycle in progress) for `status`.
The pure parts (splay, slots, backoff, the cycle line) take values; Daemon.run_once() takes its clock
from outside.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from agent import config as config_mod
from agent import control
from agent.control import CHILD_ENV, Request
from agent.errors import AgentError
from agent.fsutil import atomic_write
from agent.paths import StatePaths
from agent.redact import redact_url
from agent.report import Report, Status, Trigger, format_time, parse_time
from agent.watchservice import Batch, WatchService

log = logging.getLogger(__name__)
BACKOFF_CAP_INTERVALS = 4


# -- pure scheduling ----------------------------------------------------------------------------

def splay_offset(host: str, splay_s: float) -> float:
    """A fixed offset in [0, splay_s) from the host name: the same every start, spread over a fleet."""
    if splay_s < 1:
        return 0.0
    digest = int(hashlib.sha256(host.encode()).hexdigest()[:12], 16)
    return float(digest % int(splay_s))


def next_slot(now: float, interval_s: float, offset_s: float) -> float:
    """The next full-check time after `now`: offset + k * interval on the epoch clock."""
    k = math.floor((now - offset_s) / interval_s) + 1
    return float(k * interval_s + offset_s)


def backoff_s(failures: int, interval_s: float) -> float:
    """After n failed cycles in a row: interval, 2x, 4x ... capped at 4 intervals."""
    factor = float(2 ** max(failures - 1, 0))
    return min(interval_s * factor, interval_s * BACKOFF_CAP_INTERVALS)


def loop_backoff_s(failures: int, poll_s: float, interval_s: float) -> float:
    """After n failed loop iterations in a row (the loop itself, not a cycle): poll, 2x, 4x ... capped at
    one interval, and never under a second."""
    return max(1.0, min(poll_s * float(2 ** max(failures - 1, 0)), interval_s))


# -- systemd ------------------------------------------------------------------------------------

def sd_notify(message: str) -> None:
    """Send a notification to systemd when started as Type=notify (no-op otherwise)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)  # a notification is never worth a stuck daemon (a full socket queue)
        sock.sendto(message.encode(), address)


def watchdog_interval_s() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    return int(usec) / 2e6 if usec and usec.isdigit() else None


# -- the loop -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CycleOutcome:
    status: Status
    commit: str | None
    report: Report | None = None  # the cycle's report; None when the cycle process left none
    destination: str = ""  # where the report went: delivered, queued in the outbox (why), kept locally
    problem: str | None = None  # why there is no report


def cycle_line(trigger: Trigger, outcome: CycleOutcome, duration_s: float) -> str:
    """The daemon's one log line per cycle: 'cycle done: trigger=schedule commit=3f89d6cd416e
    status=corrected drift=2 drift_kinds=intentional:1,corrective:1 changed=2 duration_s=12.3
    report=delivered' (plus error=... when the cycle failed, with its first error)."""
    report = outcome.report
    if report is None:
        problem = outcome.problem or "the cycle process wrote no report"
        return (f"cycle done: trigger={trigger.value} status={outcome.status.value} "
                f"duration_s={duration_s:.1f} report=none error={problem!r}")
    kinds = Counter(d.kind.value for d in report.drift)
    total_s = report.durations_s.total if report.durations_s.total is not None else duration_s
    line = (f"cycle done: trigger={trigger.value} commit={(report.source.commit or '-')[:12]} "
            f"status={report.status.value} drift={len(report.drift)} "
            f"drift_kinds={','.join(f'{k}:{n}' for k, n in sorted(kinds.items())) or '-'} "
            f"changed={report.apply.changed if report.apply else 0} "
            f"duration_s={total_s:.1f} "
            f"report={outcome.destination or '-'}")
    if report.errors:
        line += f" error={report.errors[0].message!r}"
    return line


STATUS_FILE = StatePaths(Path()).daemon_status.name  # daemon.json


@dataclass(frozen=True)
class DaemonStatus:
    """What the daemon says about itself in state_dir/daemon.json (read by `gitops-agent status`)."""

    pid: int
    started_at: datetime
    next_check_at: datetime | None
    cycle_trigger: str | None  # set while a cycle runs
    cycle_started_at: datetime | None
    updated_at: datetime


def read_status(state_dir: Path) -> DaemonStatus | None:
    """The daemon's status file, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(StatePaths(state_dir).daemon_status.read_text(encoding="utf-8"))
        cycle = data.get("cycle") or {}
        return DaemonStatus(
            pid=int(data["pid"]), started_at=parse_time(data["started_at"]),
            next_check_at=parse_time(data["next_check_at"]) if data.get("next_check_at") else None,
            cycle_trigger=cycle.get("trigger"),
            cycle_started_at=parse_time(cycle["started_at"]) if cycle.get("started_at") else None,
            updated_at=parse_time(data["updated_at"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, AgentError):
        return None


# (trigger, check_only) -> outcome; a watch check adds a third argument: the roles to check
Spawn = Callable[..., CycleOutcome]
Probe = Callable[[], str | None]  # the commit source.ref points at now; None when no source answers
Redeliver = Callable[[bool], bool]  # (final) -> True when the outbox is delivered


@dataclass(frozen=True)
class Parts:
    """What the daemon builds from one configuration, and builds again from each reloaded one: the
    probe for new commits (over a Git source of source.url/ref/mirrors) and the outbox redelivery (over a
    sender to collector.url). Nothing in them may outlive the configuration they were built from."""

    probe: Probe
    redeliver: Redeliver


Build = Callable[[config_mod.AgentConfig], Parts]


class Helper(Protocol):
    """A process the daemon keeps running beside it while its configuration wants it (the warm start of
    watch checks, agent.zygote.WarmStart): close() stops it; `off` when it gave up (failed too often)."""

    off: bool

    def close(self) -> None: ...


class Daemon:
    def __init__(self, config_path: Path, config: config_mod.AgentConfig, *, spawn: Spawn,
                 probe: Probe | None = None, redeliver: Redeliver | None = None, build: Build | None = None,
                 clock: Callable[[], float] = time.time, last_commit: str | None = None,
                 warm_start: Callable[[], Helper] | None = None) -> None:
        """`build` makes the probe and redelivery from a configuration (at start and on every reload); a
        fixed `probe`/`redeliver` (tests) is used for every configuration instead. `warm_start` starts
        the warm-start helper: at start and on each reload while watching runs and `watch_warm_start` is
        on (again when it had given up); a reload that turns either off closes it (follow_config)."""
        self.config_path = config_path
        self.config = config
        self.spawn = spawn
        if build is None:
            fixed = Parts(probe or (lambda: None), redeliver or (lambda final: True))
            build = lambda cfg: fixed  # noqa: E731
        self.build = build
        parts = build(config)
        self.probe, self.redeliver = parts.probe, parts.redeliver
        self.outbox_clear = True  # False while reports wait for the collector
        self.clock = clock
        self.last_commit = last_commit
        self.failures = 0
        self.loop_failures = 0  # iterations of the loop itself that raised, in a row
        self.retry_at = 0.0  # when the loop tries again after its last failure
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.reload_requested = False
        now = clock()
        self.next_poll_at = now  # look for a new commit right away
        self.next_full_at = self._slot(now)
        self.started_at = now
        self.cycle_running: tuple[Trigger, float] | None = None
        self.watch: WatchService | None = None  # started by serve() when config.watch is on
        self.warm_start = warm_start
        self.warm: Helper | None = None  # started by follow_config() while the configuration wants it

    @property
    def paths(self) -> StatePaths:
        return StatePaths(self.config.state_dir)

    def _slot(self, now: float) -> float:
        sched = self.config.schedule
        return next_slot(now, sched.interval_s, splay_offset(self.config.host, sched.splay_s))

    def run_once(self) -> Trigger | None:
        """Do what is due now: requests from `run`, a new commit, a full check. Returns the trigger run."""
        if self.reload_requested:
            self.reload()
        for request in self._pending_requests():
            self._cycle(Trigger.MANUAL, request)
            return Trigger.MANUAL
        now = self.clock()
        if now >= self.next_poll_at:
            self.next_poll_at = now + self.config.schedule.poll_s
            if not self.outbox_clear:  # the collector was away: try again at the poll pace
                self.outbox_clear = self.redeliver(False)
            commit = self._probe()
            if commit is not None and commit != self.last_commit:
                log.info("new commit: commit=%s previous=%s", commit[:12], (self.last_commit or "-")[:12])
                self._cycle(Trigger.NEW_COMMIT)
                return Trigger.NEW_COMMIT
        batch = self.watch.take() if self.watch is not None else None
        if batch is not None and batch.roles:
            log.info("watched paths changed: roles=%s paths=%s%s", ",".join(batch.roles),
                     ",".join(sorted(batch.paths)[:5]), " ..." if len(batch.paths) > 5 else "")
            self._cycle(Trigger.WATCH, watch=batch)
            return Trigger.WATCH
        if now >= self.next_full_at:
            trigger = Trigger.RETRY if self.failures else Trigger.SCHEDULE
            self._cycle(trigger)
            return trigger
        return None

    def _stamp(self, when: float) -> str:
        return format_time(datetime.fromtimestamp(when, UTC))

    def write_status(self) -> None:
        """state_dir/daemon.json: what `gitops-agent status` shows about the daemon. Best effort."""
        running = self.cycle_running
        data = {"pid": os.getpid(), "host": self.config.host, "started_at": self._stamp(self.started_at),
                "next_check_at": self._stamp(self.next_full_at), "updated_at": self._stamp(self.clock()),
                "cycle": {"trigger": running[0].value, "started_at": self._stamp(running[1])}
                if running else None}
        try:
            atomic_write(self.paths.daemon_status, json.dumps(data, indent=1).encode(), mode=0o644)
        except OSError as e:
            log.warning("cannot write the daemon's status file: %s", e)

    def _probe(self) -> str | None:
        """The source's current commit; None when the probe fails (the full check then runs as planned and
        reports why: a broken probe must not stop cycles)."""
        try:
            return self.probe()
        except Exception as e:
            log.error("probe for new commits failed: %s: %s", type(e).__name__, e)
            return None

    def _iterate(self) -> bool:
        """One iteration of the loop; a failure (the loop's own, not a cycle's) backs off exponentially,
        so that a persistent one is retried slowly, never in a hot loop. True while the loop is healthy:
        no failure, or the retry after the last one went through."""
        started = self.clock()
        try:
            self.run_once()
        except Exception:  # a failed iteration must not end the daemon
            self.loop_failures += 1
            now = self.clock()
            delay = loop_backoff_s(self.loop_failures, self.config.schedule.poll_s,
                                   self.config.schedule.interval_s)
            self.retry_at = self.next_poll_at = now + delay
            self.next_full_at = max(self.next_full_at, now + delay)
            log.exception("daemon iteration failed (%d in a row); retry in %.0fs", self.loop_failures, delay)
            sd_notify(f"STATUS=the loop failed {self.loop_failures} time(s) in a row; retry in {delay:.0f}s")
            return False
        if self.loop_failures and started >= self.retry_at:
            log.info("daemon loop recovered after %d failure(s)", self.loop_failures)
            self.loop_failures = 0
        return self.loop_failures == 0

    def _cycle(self, trigger: Trigger, request: Request | None = None, watch: Batch | None = None) -> None:
        sd_notify(f"STATUS=running a cycle ({trigger.value})")
        started = self.clock()
        self.cycle_running = (trigger, started)
        self.write_status()
        if self.watch is not None:
            self.watch.cycle_started(watch)  # what this cycle applies is its own: no watch check for it
        outcome: CycleOutcome | None = None
        try:
            if watch is None:
                outcome = self.spawn(trigger, request.check_only if request else False)
            else:  # contested paths: this check reports them, and corrects nothing
                outcome = self.spawn(trigger, watch.check_only, watch.roles)
        finally:
            self.cycle_running = None
            if self.watch is not None:
                self.watch.cycle_ended(watch, outcome.report if outcome is not None else None)
        self.outbox_clear = False  # the child delivered; whatever it left is retried at the next poll
        if request is not None:
            control.complete(self.paths, request, outcome.status.value,
                             outcome.report.run_id if outcome.report else None)
        if outcome.commit:
            self.last_commit = outcome.commit
        now = self.clock()
        line = cycle_line(trigger, outcome, now - started)
        if outcome.status in (Status.FAILED, Status.ERROR):
            self.failures += 1
            self.next_full_at = now + backoff_s(self.failures, self.config.schedule.interval_s)
            log.warning("%s retry_in_s=%.0f failures_in_a_row=%d", line, self.next_full_at - now,
                        self.failures)
        else:
            self.failures = 0
            self.next_full_at = self._slot(now)
            log.info("%s next_check_in_s=%.0f", line, self.next_full_at - now)
        self.write_status()
        sd_notify(f"STATUS={outcome.status.value} at {(outcome.commit or '-')[:12]}; next full check in "
                  f"{self.next_full_at - now:.0f}s")

    def _pending_requests(self) -> list[Request]:
        return control.pending(self.paths)

    def reload(self) -> None:
        """Read the configuration again and rebuild what was built from it (the probe over the source,
        the redelivery over the sender). A configuration that cannot be loaded or built, or that moves
        state_dir (the pid and status files, the lock and the state live there: a restart's job), is
        refused with one log line and the old one kept."""
        self.reload_requested = False
        try:
            new = config_mod.load(self.config_path)
            if new.state_dir != self.config.state_dir:
                raise AgentError(f"state_dir changed from {self.config.state_dir} to {new.state_dir}: "
                                 "restart the daemon to move it")
            parts = self.build(new)
        except AgentError as e:
            log.error("reload refused, keeping the old configuration: %s", e)
            return
        old = self.config.source
        watch_changed = _watch_settings(new) != _watch_settings(self.config)
        self.config = new
        if watch_changed:  # start, stop or rebuild the watcher with the new settings
            self.stop_watch()
            self.start_watch()
        elif self.watch is None:  # wanted but could not start (inotify): a reload tries again
            self.start_watch()
        self.follow_config()
        self.probe, self.redeliver = parts.probe, parts.redeliver
        self.outbox_clear = False  # a new collector (or token): try it at the next poll
        self.next_poll_at = self.clock()  # ask the (maybe new) source at once
        self.next_full_at = min(self.next_full_at, self._slot(self.clock()))
        self.write_status()
        moved = "" if (old.url, old.ref) == (new.source.url, new.source.ref) else \
            f" source: url={redact_url(new.source.url)} ref={new.source.ref}"
        log.info("configuration reloaded from %s%s", self.config_path, moved)

    def follow_config(self) -> None:
        """Start or stop what runs beside the daemon as the current configuration wants it: the warm-start
        helper runs while watching runs (`watch` on, and inotify started: start_watch) and
        `watch_warm_start` is on (and a `warm_start` was given). Called
        at start and after each reload, between cycles (no check is forked from the helper then). A helper
        that gave up (`off`: it failed WarmStart.MAX_STARTS times in a row) is replaced by a new one: a
        reload is how an operator says the cause is fixed."""
        # the helper serves watch checks only: not while watching is off, by the configuration or because
        # inotify could not be started (start_watch)
        wanted = self.warm_start is not None and self.watch is not None and self.config.watch_warm_start
        if wanted and self.warm is not None and self.warm.off:
            warm, self.warm = self.warm, None
            warm.close()
            log.info("warm start: the helper had given up; the reload starts a new one")
        if wanted and self.warm is None and self.warm_start is not None:
            self.warm = self.warm_start()
            log.info("warm start: on")
        elif not wanted and self.warm is not None:
            warm, self.warm = self.warm, None
            warm.close()
            log.info("warm start: off (watch=%s watch_warm_start=%s): the helper is stopped",
                     str(self.watch is not None).lower(), str(self.config.watch_warm_start).lower())

    # -- watching managed paths (docs/watch.md) -----------------------------------------------

    def start_watch(self) -> None:
        """Watch the managed paths of the last checks when config.watch is on. When inotify cannot be
        started at all, watching is off: scheduled checks only, said in status and the log."""
        if not self.config.watch or self.watch is not None:
            return
        try:
            self.watch = WatchService(self.paths, self.wake, debounce_s=self.config.watch_debounce_s,
                                      contested_flips=self.config.watch_contested_flips,
                                      max_watches=self.config.watch_max_watches or None,
                                      exclude=self.config.watch_exclude)
        except AgentError as e:
            log.warning("watch: off, scheduled checks only: %s", e)
            with contextlib.suppress(OSError):
                atomic_write(self.paths.watch_state, json.dumps({"on": False, "reason": str(e)}).encode(),
                             mode=0o644)
            return
        self.watch.start()

    def stop_watch(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        self.paths.watch_state.unlink(missing_ok=True)

    # -- serving ----------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        elif signum != signal.SIGUSR1:
            self.stop.set()
        self.wake.set()

    def serve(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        paths = self.paths  # state_dir never changes on reload
        control.write_pid(paths)
        self.write_status()
        sd_notify("READY=1")
        log.info("daemon started: host=%s interval_s=%g poll_s=%g splay_s=%g", self.config.host,
                 self.config.schedule.interval_s, self.config.schedule.poll_s, self.config.schedule.splay_s)
        watchdog = watchdog_interval_s()
        self.start_watch()
        self.follow_config()
        try:
            while not self.stop.is_set():
                healthy = self._iterate()
                if watchdog and healthy:  # a loop that keeps failing stops pinging: systemd restarts it
                    sd_notify("WATCHDOG=1")
                due = min(self.next_poll_at, self.next_full_at) - self.clock()
                watch_due = self.watch.due_in() if self.watch is not None else None
                if watch_due is not None:
                    due = min(due, watch_due)
                self.wake.wait(max(0.0, min(due, watchdog or due)))
                self.wake.clear()
        finally:
            self.stop_watch()
            if self.warm is not None:
                self.warm.close()
                self.warm = None
            sd_notify("STOPPING=1")
            self.redeliver(True)
            control.remove_pid(paths)
            paths.daemon_status.unlink(missing_ok=True)
            log.info("daemon stopped")
        return 0


def _watch_settings(cfg: config_mod.AgentConfig) -> tuple[object, ...]:
    return (cfg.watch, cfg.watch_debounce_s, cfg.watch_contested_flips, cfg.watch_max_watches,
            frozenset(cfg.watch_exclude))


def child_env() -> dict[str, Any]:
    return {**os.environ, CHILD_ENV: "1"}
