"""One reconcile pass: source -> plan -> check -> drift -> decide -> apply -> recheck -> report.

Every attempt ends in a Report, including attempts that fail before Ansible starts (the phase reached
says where). The cycle holds the state directory's lock for its whole length. Under it, before anything
else, it finishes what an earlier cycle could not (agent.journal): kills that cycle's leftover processes,
clears its runner files, and publishes its report. A cycle counts as done when its journal record holds
its report; everything after that is idempotent copying.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from agent import (
    __version__,
    ansible_cfg,
    ansible_env,
    drift,
    invcache,
    policy,
    report_size,
    requirements,
    runner,
    vault,
    watchservice,
    wiring,
)
from agent import verdict as verdict_of
from agent.config import AgentConfig
from agent.cycle_rollout import RolloutGate
from agent.drift import DriftContext, Finding
from agent.errors import AgentError, RewindError, RunCancelledError, RunTimeoutError, VerifyError
from agent.fsutil import atomic_write, describe_os_error
from agent.inventory import RunPlan, make_plan, parse_graph
from agent.journal import CycleRecord, Journal, Published
from agent.lock import cycle_lock
from agent.progress import PhaseDone, PhaseStarted, Progress, ProgressEvent
from agent.redact import Redactor, redact_record, redact_report, redact_url
from agent.report import (
    ApplyResult,
    DriftItem,
    Durations,
    Enforcement,
    ErrorItem,
    FailedTask,
    GateState,
    Mode,
    Pause,
    Phase,
    Report,
    RolloutInfo,
    Signature,
    SourceInfo,
    Stats,
    Status,
    Trigger,
    format_time,
    parse_time,
)
from agent.rollout import FILE_NAME as ROLLOUT_FILE
from agent.runner import RunMode, RunnerSettings, RunResult, RunStatus
from agent.source import Revision
from agent.state import AgentState, HeldCommit, first_seen
from agent.verdict import RunVerdict
from agent.watchpaths import RolePaths
from agent.wiring import CycleParts

log = logging.getLogger(__name__)
SYNTAX_KEYS = 4  # commits+roles whose playbooks are known to load (state_dir's syntax_checked)


def utc_now() -> datetime:
    return datetime.now(UTC)


def never() -> bool:
    return False


@dataclass(frozen=True)
class CycleOptions:
    trigger: Trigger = Trigger.MANUAL
    check_only: bool = False
    # A local problem found before the cycle (the CLI's preflight: e.g. an unsafe token file): the
    # attempt is reported as an error at phase fetch, and nothing is fetched or run.
    refusal: str | None = None
    # Check only these roles (a watch check: the roles whose watched paths changed); None: all of them.
    roles: tuple[str, ...] | None = None


@dataclass
class _Attempt:
    """What one cycle learned so far (local to the cycle, turned into a Report at the end)."""

    started_at: datetime
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    pause: Pause | None = None
    phase: Phase = Phase.FETCH
    status: Status = Status.ERROR
    revision: Revision | None = None
    signature: Signature | None = None  # of a commit refused at verify (no revision then)
    refused_commit: str | None = None
    plan: RunPlan | None = None
    findings: tuple[Finding, ...] = ()
    apply: ApplyResult | None = None
    stats: Stats = field(default_factory=Stats)
    errors: list[ErrorItem] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    broken_roles: dict[str, str] = field(default_factory=dict)  # role -> why Ansible cannot load it
    all_roles: tuple[str, ...] = ()  # the host's roles, broken ones included (the plan has the others)
    warnings: list[str] = field(default_factory=list)  # run-level: where Ansible ran unlike ansible-playbook
    strategy: str | None = None  # set when mitogen was dropped for this cycle (runner's fallback)
    rollout: RolloutInfo | None = None  # where the host stands in the commit's rollout (rollout.yml)
    # The drift of an earlier check of a held commit, reported again when this cycle did not check it
    carried: tuple[DriftItem, ...] | None = None

    def fail(self, message: str, phase: Phase | None = None) -> None:
        self.errors.append(ErrorItem(phase or self.phase, message))


class Cycle:
    def __init__(self, config: AgentConfig, *, parts: CycleParts | None = None,
                 clock: Callable[[], datetime] = utc_now, cancel: Callable[[], bool] = never,
                 progress: Progress | None = None) -> None:
        """`parts`: the source, state store, playbook runner and outbox spool (agent.wiring builds the
        real ones from `config` when none are given)."""
        parts = parts or wiring.cycle_parts(config)
        self.config = config
        self.clock = clock
        self.cancel = cancel
        self.progress = progress
        self.store = parts.store
        self.source = parts.source
        self.runner = parts.runner
        self.deadline = 0.0  # monotonic; set when a cycle starts
        self.settings = RunnerSettings(
            work_dir=self.store.work_dir, timeout_s=config.schedule.timeout_s,
            extra_vars=dict(config.extra_vars), strategy=config.ansible.strategy,
            fact_cache_dir=self.store.paths.facts, gather_subset=config.ansible.gather_subset,
            fact_cache_timeout_s=config.ansible.fact_cache_timeout_s,
            vault_password_file=config.vault_password_file)
        self.redactor = Redactor(config.redact)  # plus the checkout's vault values once it is known
        self.journal = Journal(config, self.store, clock=clock, spool=parts.spool)
        self.unspooled: list[Report] = []  # reports that could not go into the outbox: deliver them directly
        self.problems: list[str] = []  # what could not be written, one line each (for the CLI)
        self.rollout_gate = RolloutGate(config.host, ask=parts.ask_rollout, clock=clock)

    def run(self, options: CycleOptions) -> Report:
        """One full cycle under the state directory's lock. Never raises AgentError: it reports it."""
        self.store.ensure()
        with cycle_lock(self.store.lock_file, wait_s=self.config.lock_wait_s):
            return self._run_locked(options, self._recover())

    def _recover(self) -> list[str]:
        """What earlier cycles left: their processes killed, their runner files and git locks removed,
        their reports published (agent.journal), unreadable cache files dropped. Returns warnings."""
        warnings: list[str] = []
        try:
            killed = runner.kill_stale(self.config.state_dir)
            runner.clear_work_dir(self.store.work_dir)
            warnings += self.source.clear_leftovers()
            recovery = self.journal.recover(killed)
            warnings += recovery.warnings
            for published in recovery.published:
                self._published(published)
            dropped = runner.drop_bad_facts(self.settings.fact_cache_dir)
            warnings += [f"dropped unreadable cached facts: {', '.join(dropped)}"] if dropped else []
            problem = self.store.check_last_run(self.clock())
            warnings += [problem] if problem else []
        except OSError as e:
            warnings.append(f"cleaning up after earlier cycles failed: {describe_os_error(e)}")
            log.error("cleaning up after earlier cycles failed: %s", describe_os_error(e))
        return warnings

    def _begin(self, options: CycleOptions, warnings: list[str]) -> tuple[_Attempt, AgentState]:
        """Record the cycle, then load the state (an unreadable file is quarantined and reported)."""
        now = self.clock()
        attempt = _Attempt(started_at=now, warnings=warnings)
        mode = Mode.CHECK if options.check_only else self.config.mode
        problem = self.journal.begin(CycleRecord(attempt.run_id, os.getpid(), now, options.trigger, mode,
                                                 previous_commit=self.store.peek_last_commit()))
        if problem:
            attempt.warnings.append(problem)
        state, state_problem = self.store.load_or_quarantine(now)
        attempt.pause, pause_problem = self.store.read_pause_or_quarantine(now)
        for problem in (state_problem, pause_problem):
            if problem:
                attempt.fail(problem)
        marker = runner.marker_env(self.config.state_dir, attempt.run_id)
        self.settings = replace(self.settings, env={**self.settings.env, **marker})
        self.source.mark(marker)
        return attempt, state

    def _run_locked(self, options: CycleOptions, warnings: list[str]) -> Report:
        attempt, state = self._begin(options, warnings)
        started = time.monotonic()
        self.deadline = started + self.config.schedule.timeout_s
        try:
            if options.refusal is not None:
                attempt.fail(options.refusal)  # status stays error, phase fetch: nothing ran
            elif attempt.errors:  # an unreadable state file, moved aside: this cycle says so, the next runs
                attempt.status = Status.ERROR
                log.info("cycle stopped: %s", "; ".join(e.message for e in attempt.errors))
            elif attempt.pause is not None and attempt.pause.checks_too:
                attempt.status = Status.PAUSED  # not even a check while paused with --checks-too
                log.info("paused, checks too: reason=%r", attempt.pause.reason)
            else:
                state = self._reconcile(attempt, state, options)
        except (RunTimeoutError, RunCancelledError) as e:
            attempt.status = Status.FAILED
            attempt.fail(str(e))
            log.info("cycle stopped: phase=%s error=%s", attempt.phase.value, self.redactor(str(e)))
        except (RewindError, VerifyError) as e:
            attempt.phase = Phase.VERIFY
            outcome = getattr(e, "outcome", None)  # SignatureRejectedError says which commit and key
            if outcome is not None:
                attempt.signature, attempt.refused_commit = outcome.signature, outcome.commit
            attempt.status = Status.ERROR
            attempt.fail(str(e))
            log.info("source refused: phase=verify error=%s", self.redactor(str(e)))
        except AgentError as e:
            attempt.status = Status.ERROR
            attempt.fail(str(e))
            log.info("cycle failed: phase=%s error=%s", attempt.phase.value, self.redactor(str(e)))
        except OSError as e:  # e.g. out of disk: a report, not a traceback
            attempt.status = Status.ERROR
            attempt.fail(describe_os_error(e))
            log.info("cycle failed: phase=%s error=%s", attempt.phase.value, describe_os_error(e))
        attempt.durations["total"] = time.monotonic() - started
        report, state = self._report(attempt, state, options)
        report = redact_report(report, self.redactor)  # before it is written or sent anywhere
        report = report_size.fit(report)  # so that the collector can always take it
        self._finish(report, replace(state, updated_at=format_time(attempt.started_at)))
        log.info("cycle done: host=%s commit=%s status=%s drift=%d duration_s=%.1f",
                 report.host, report.source.commit, report.status.value, len(report.drift),
                 attempt.durations["total"])
        return report

    def _finish(self, report: Report, state: AgentState) -> None:
        """The durable ordering (agent.journal): the record takes the report (the cycle is done), then the
        outbox, history and last_run.json, state.json."""
        problem = self.journal.commit(report, state)
        self._published(self.journal.publish(report, state, committed=problem is None,
                                             problems=(problem,) if problem else ()))

    def _published(self, published: Published) -> None:
        if not published.spooled:
            self.unspooled.append(published.report)
        if published.problems:
            line = f"report {published.report.run_id}: could not write " + "; ".join(published.problems)
            self.problems.append(line)
            log.error("%s", line)

    # -- phases ------------------------------------------------------------------------------

    def _emit(self, event: ProgressEvent) -> None:
        """Tell the onlooker (if any); a display that fails never stops the cycle."""
        if self.progress is None:
            return
        try:
            self.progress(event)
        except Exception:
            log.debug("progress display failed; not showing progress any more", exc_info=True)
            self.progress = None

    def _timed(self, attempt: _Attempt, name: str, started: float) -> None:
        attempt.durations[name] = attempt.durations.get(name, 0.0) + time.monotonic() - started

    def _reconcile(self, attempt: _Attempt, state: AgentState, options: CycleOptions) -> AgentState:
        started = time.monotonic()
        self._emit(PhaseStarted("fetch"))
        keep = (state.applied_commit, state.converged[-1] if state.converged else None)
        revision = self.source.sync(last_commit=state.last_commit, keep=tuple(c for c in keep if c))
        self._timed(attempt, "fetch", started)
        self._emit(PhaseDone("fetch", f"{revision.commit[:12]} {revision.subject or ''}".strip()
                             + (" (offline: the last commit)" if revision.offline else "")))
        self._emit(PhaseDone("verify", f"signature {revision.signature.status.value.replace('_', ' ')}"
                             + (f" by {revision.signature.signer}" if revision.signature.signer else "")))
        attempt.revision = revision
        for error in revision.fetch_errors:
            attempt.fail(error, Phase.FETCH)
        if revision.offline:
            attempt.fail(f"every source is unreachable; running against the last commit "
                         f"{revision.commit[:12]}", Phase.FETCH)
        attempt.phase = Phase.VERIFY
        state = replace(state, last_commit=revision.commit)
        try:
            state = self._run_revision(attempt, state, options, revision)
        except (RunTimeoutError, RunCancelledError):
            raise
        except AgentError as e:
            if not self._undecided(attempt, state, options):
                raise
            attempt.status = Status.ERROR
            attempt.fail(str(e))
            log.info("commit %s failed before the rollout gate: phase=%s error=%s", revision.commit[:12],
                     attempt.phase.value, self.redactor(str(e)))
            return self._enforce_undecided(attempt, state, options)
        if attempt.phase is Phase.PLAN and attempt.status is Status.FAILED and self._undecided(
                attempt, state, options):  # every role of the commit is broken: nothing of it ran
            return self._enforce_undecided(attempt, state, options)
        return state

    def _run_revision(self, attempt: _Attempt, state: AgentState, options: CycleOptions,
                      revision: Revision, *, enforcing: bool = False) -> AgentState:
        """Plan, check, decide, apply and recheck one verified commit. ``enforcing``: the host's converged
        commit, run while the rollout gate holds the fetched one (no further hold, no skipped check)."""
        attempt.phase = Phase.PLAN
        self._emit(PhaseStarted("plan"))
        full = self._plan(revision)
        limited = self._limited(full, options)
        attempt.plan = plan = self._without_broken_roles(attempt, limited,
                                                         full if limited is not full else None)
        attempt.warnings.extend(ansible_env.warnings(ansible_cfg.load(revision.path),
                                                     inventory=plan.inventory))
        self._emit(PhaseDone("plan", f"roles: {', '.join(attempt.plan.roles) or '-'}"))
        if not plan.roles:  # every role is broken: nothing Ansible could run
            attempt.status = Status.FAILED
            return state
        attempt.phase = Phase.CHECK
        if not enforcing and self._still_held(attempt, state, options):
            return self._enforce(attempt, state, options)
        check = self._ansible(attempt, plan, RunMode.CHECK, "check")
        self._hand_off_watch_set(plan, check, options)
        verdict = self._judge(check, plan, self._check_only_keys(state, revision.commit))
        ctx = DriftContext(commit=revision.commit, converged=frozenset(state.converged),
                           recurring=frozenset(state.recurring.get(revision.commit, ())))
        attempt.findings = (drift.classify_tasks((*check.parsed.tasks, *verdict.unattributed), ctx)
                            + drift.check_only_findings(verdict, self._playbook_names(plan)))
        attempt.stats = check.parsed.stats
        decided = self._decide_and_apply(attempt, state, options, verdict, enforcing=enforcing)
        if attempt.broken_roles and attempt.status is not Status.ERROR:
            # A role of this host did not run: the host is not in the commit's state, whatever the
            # others did. Failed, and never counted as converged to this commit.
            attempt.status = Status.FAILED
            decided = replace(decided, converged=state.converged)
        if limited is not full:  # a watch check of some roles says nothing of the others'
            decided = replace(decided, converged=state.converged)
        return decided

    @staticmethod
    def _limited(plan: RunPlan, options: CycleOptions) -> RunPlan:
        """The plan for only `options.roles` (a watch check); the whole plan when none of them is in it
        any more (a new commit dropped them: then a full check is the right one)."""
        if options.roles is None:
            return plan
        kept = [(r, p) for r, p in zip(plan.roles, plan.playbooks, strict=True) if r in options.roles]
        if not kept:
            return plan
        return replace(plan, roles=tuple(r for r, _ in kept), playbooks=tuple(p for _, p in kept))

    def _redacted_managed(self, managed: dict[str, RolePaths]) -> dict[str, RolePaths]:
        """The watch set as it may be written to state_dir: the blind tasks' names (labels for people)
        redacted like the report's; the paths kept as they are on disk, since the watcher needs them."""
        return {role: replace(entry, blind=tuple(self.redactor(name) for name in entry.blind))
                for role, entry in managed.items()}

    def _hand_off_watch_set(self, plan: RunPlan, check: RunResult, options: CycleOptions) -> None:
        """The paths each role managed in this check, for the daemon's watcher (state_dir/watch.json).
        Best effort: a watch set that cannot be written leaves the schedule to find drift, as without
        watching."""
        if not self.config.watch:
            return
        try:
            watchservice.write_set(self.store.paths, check.managed,
                                   limited_to=plan.roles if options.roles is not None else None,
                                   exclude=self.config.watch_exclude)
        except OSError as e:
            log.warning("cannot write the watch set: %s", describe_os_error(e))

    @staticmethod
    def _check_only_keys(state: AgentState, commit: str) -> frozenset[str]:
        """Tasks known to fail only in check mode, for a commit this host converged to."""
        return frozenset(state.check_only.get(commit, ())) if commit in state.converged else frozenset()

    @staticmethod
    def _playbook_names(plan: RunPlan) -> dict[str, str]:
        """role -> its playbook as the report names it (relative to the checkout)."""
        names = {}
        for role, book in zip(plan.roles, plan.playbooks, strict=True):
            try:
                names[role] = str(book.relative_to(plan.project_dir))
            except ValueError:
                names[role] = str(book)
        return names

    def _judge(self, result: RunResult, plan: RunPlan, check_only: frozenset[str]) -> RunVerdict:
        return verdict_of.judge(result.parsed, host=plan.host, roles=plan.roles,
                                playbooks=self._playbook_names(plan), check_only_keys=check_only)

    def _syntax_key(self, plan: RunPlan) -> str:
        return hashlib.sha256(json.dumps([plan.commit, plan.roles, self.settings.extra_vars,
                                          str(self.settings.vault_password_file)],
                                         sort_keys=True, default=str).encode()).hexdigest()

    def _without_broken_roles(self, attempt: _Attempt, plan: RunPlan,
                              whole: RunPlan | None = None) -> RunPlan:
        """The plan less the roles whose playbook Ansible cannot load, each reported as a failed role
        with its one-line error: a broken role fails alone, the others still run (together, in one
        ansible-playbook run, so facts set by one reach the next). `whole`: the plan that `plan` was
        limited from (a watch check's roles): when all of its playbooks loaded, so do some of them."""
        # A commit's playbooks load the same way every time for the same roles and variables: once they
        # all loaded, the next cycles of that commit skip the check (~1.5 CPU-s each; bench/README.md).
        key = self._syntax_key(plan)
        loaded = {key} | ({self._syntax_key(whole)} if whole is not None else set())
        # Several keys: while the rollout gate holds a commit, each cycle plans it and the converged one.
        marker = self.store.paths.syntax_checked
        broken: dict[str, str] = {}
        known = marker.read_text(encoding="utf-8").split() if marker.is_file() else []
        if not loaded & set(known):
            remaining = self.deadline - time.monotonic()
            broken = self.runner.syntax_errors(plan, replace(self.settings, timeout_s=remaining))
            if not broken:
                atomic_write(marker, "".join(f"{k}\n" for k in [key, *known][:SYNTAX_KEYS]).encode())
        for role, error in broken.items():
            attempt.fail(f"role '{role}' cannot be loaded, so it did not run: {self.redactor(error)}",
                         Phase.PLAN)
        attempt.broken_roles, attempt.all_roles = broken, plan.roles
        kept = [(r, p) for r, p in zip(plan.roles, plan.playbooks, strict=True) if r not in broken]
        return replace(plan, roles=tuple(r for r, _ in kept), playbooks=tuple(p for _, p in kept))

    def _plan(self, revision: Revision) -> RunPlan:
        vault.check_password_sources([revision.path],
                                     runner.ansible_environ(revision.path, self.settings))
        self.redactor = vault.redactor(revision.path, patterns=self.config.redact,
                                       password_file=self.config.vault_password_file)
        requirements.check(revision.path, revision.path / self.config.playbooks)
        inventory = revision.path / self.config.inventory
        playbooks_dir = revision.path / self.config.playbooks
        graph = parse_graph(invcache.graph(
            self.store.paths.inventory_cache, commit=revision.commit, host=self.config.host,
            inventory_name=self.config.inventory, inventory=inventory,
            parse=lambda: self.runner.inventory_graph(inventory, revision.path, self.settings)))
        names = [p.stem for p in playbooks_dir.glob("*.yml")] if playbooks_dir.is_dir() else []
        self.rollout_gate.graph = graph
        return make_plan(graph=graph, host=self.config.host, commit=revision.commit,
                         project_dir=revision.path, playbooks_dir=playbooks_dir, inventory=inventory,
                         playbook_names=names)

    def _ansible(self, attempt: _Attempt, plan: RunPlan, mode: RunMode, name: str,
                 playbooks: tuple[Path, ...] | None = None) -> RunResult:
        started = time.monotonic()
        remaining = self.deadline - started
        if remaining <= 1:
            raise RunTimeoutError(f"no time left for the {name} (schedule.timeout is "
                                  f"{self.config.schedule.timeout_s:g}s)")
        settings = replace(self.settings, timeout_s=remaining,
                           strategy=attempt.strategy or self.settings.strategy)
        self.journal.progress(phase=attempt.phase, commit=plan.commit, roles=plan.roles)
        self._emit(PhaseStarted(name))
        try:
            result = self.runner.run_playbooks(plan, mode, settings, cancel=self.cancel, playbooks=playbooks,
                                          progress=self._emit if self.progress else None)
        finally:
            self._timed(attempt, name, started)
        self._emit(PhaseDone(name))
        attempt.warnings.extend(result.warnings)
        if result.fallback is not None:  # what mitogen could not run in the check, it cannot in the apply
            attempt.strategy = "linear"
        result = replace(result, parsed=redact_record(result.parsed, self.redactor),  # task names, diffs
                         managed=self._redacted_managed(result.managed))
        if result.status == RunStatus.TIMEOUT:
            limit_s = self.config.schedule.timeout_s
            raise RunTimeoutError(f"ansible {name} stopped after {time.monotonic() - started:.0f}s: "
                                  f"the cycle ran past schedule.timeout ({limit_s:g}s)")
        if result.status == RunStatus.CANCELED:
            raise RunCancelledError(f"ansible {name} was cancelled after {time.monotonic() - started:.0f}s "
                                  "(the agent is stopping)")
        recap = result.parsed.stats
        judged = result.parsed.recap_seen and recap.failed + recap.unreachable > 0
        if not result.ok and not drift.failures(result.parsed.tasks) and not judged:
            detail = "; ".join(result.parsed.messages) or f"ansible-playbook exited with {result.rc}"
            raise AgentError(f"ansible {name} failed before running tasks: {detail}")
        return result

    def _decide_and_apply(self, attempt: _Attempt, state: AgentState, options: CycleOptions,
                          verdict: RunVerdict, *, enforcing: bool = False) -> AgentState:
        assert attempt.revision is not None and attempt.plan is not None
        commit = attempt.revision.commit
        for message in verdict.idle_roles:
            attempt.fail(message, Phase.CHECK)
        actionable = [f for f in attempt.findings if f.actionable]
        gate = self.rollout_gate.decide(attempt.revision, state, attempt.findings, attempt.plan.roles)
        if gate is not None:
            attempt.rollout = replace(gate.info, checked_at=attempt.started_at)
            if not gate.decision.allow and (actionable or verdict.failed) and not options.check_only:
                log.info("rollout gate holds commit %s: %s", commit[:12], gate.decision.reason)
                for task in verdict.failed:
                    attempt.fail(f"task '{task.label}' failed: {task.message or 'no message'}", Phase.CHECK)
                attempt.status = self._status_without_apply(verdict, actionable, attempt.pause)
                attempt.phase = Phase.DONE
                if not gate.new_commit or enforcing:  # a corrective apply held (window, freeze): as designed
                    return state
                # C is held: the host keeps enforcing its last converged commit (docs/rollout.md). Its
                # check is not repeated while the gate's answer stays the same (unless it failed).
                held = None if verdict.failed else HeldCommit(
                    commit, gate.key, format_time(attempt.started_at), gate.info.plan_digest)
                return self._enforce(attempt, replace(state, held=held), options)
        if not enforcing:
            state = replace(state, held=None)
        decision = policy.decide(actionable_drift=len(actionable), check_failures=len(verdict.failed),
                                 mode=self.config.mode, check_only=options.check_only,
                                 pause=attempt.pause, now=self.clock())
        log.info("decision: apply=%s reason=%s", decision.apply, decision.reason)
        if not decision.apply:
            for task in verdict.failed:
                attempt.fail(f"task '{task.label}' failed: {task.message or 'no message'}", Phase.CHECK)
            attempt.status = self._status_without_apply(verdict, actionable, attempt.pause)
            attempt.phase = Phase.DONE
            if attempt.status is Status.IN_SYNC:
                state = state.with_converged(commit)
            return state
        return self._apply(attempt, state, verdict, options)

    def _still_held(self, attempt: _Attempt, state: AgentState, options: CycleOptions) -> bool:
        """May this cycle skip the check of the fetched commit C? Yes when the gate held C at its last
        check (which found drift and no failure), gives the same answer now (with that check's plan
        digest: an approval of it, a wave or window opening, a halt or resume all change it), the last
        report is that check's (or carries it), and the cycle enforces a converged commit instead
        (there is one; enforce mode; not a check-only or manual run). The report then carries that
        check's drift, says when it ran (rollout.checked_at) and what this cycle enforced."""
        held, revision, plan = state.held, attempt.revision, attempt.plan
        if (held is None or revision is None or plan is None or held.commit != revision.commit
                or not state.converged or options.check_only or self.config.mode is not Mode.ENFORCE
                or options.trigger is Trigger.MANUAL):
            return False
        gate = self.rollout_gate.decide_with_plan(revision, state, held.plan, plan.roles)
        if gate is None or gate.decision.allow or gate.key != held.gate:
            return False
        checked_at = parse_time(held.checked_at)
        last = self.store.last_report()
        if (last is None or last.source.commit != revision.commit or last.rollout is None
                or last.rollout.checked_at != checked_at):
            return False
        log.info("rollout gate still holds commit %s (%s): not checked again", revision.commit[:12],
                 gate.decision.reason)
        attempt.rollout = replace(gate.info, checked_at=checked_at)
        attempt.carried = last.drift
        attempt.status = Status.PAUSED if policy.pause_active(attempt.pause, self.clock()) else Status.DRIFTED
        attempt.phase = Phase.DONE
        attempt.warnings.append(f"commit {revision.commit[:12]} was not checked again: the rollout gate's "
                                f"answer has not changed since its check at {held.checked_at}; its drift "
                                "is that check's")
        return True

    def _enforce(self, attempt: _Attempt, state: AgentState, options: CycleOptions) -> AgentState:
        """While the gate holds the fetched commit (or it failed before the gate: ``_enforce_undecided``):
        check the host's last converged commit again (a verified checkout: its signature, and the fetched
        commit descends from it) and, drifted, apply and recheck it, as its own rollout.yml allows (a
        closed window with `corrective: window`, a freeze, a pause hold it). In enforce mode only; the
        outcome goes to rollout.enforced."""
        assert attempt.rollout is not None and attempt.revision is not None
        if options.check_only or self.config.mode is not Mode.ENFORCE:
            return state
        commit = state.converged[-1] if state.converged else None
        if commit is None:
            attempt.rollout = replace(attempt.rollout, enforced=Enforcement(
                None, None, "no converged commit yet: nothing to enforce"))
            return state
        sub = _Attempt(started_at=attempt.started_at, run_id=attempt.run_id, pause=attempt.pause,
                       phase=Phase.VERIFY, strategy=attempt.strategy)
        redactor, graph = self.redactor, self.rollout_gate.graph
        try:
            revision = self.source.release(commit, head=attempt.revision.commit)
            sub.revision = revision
            state = self._run_revision(sub, state, options, revision, enforcing=True)
        except (RunTimeoutError, RunCancelledError):
            raise
        except AgentError as e:
            sub.status = Status.ERROR
            sub.fail(self.redactor(str(e)))
        finally:
            self.redactor, self.rollout_gate.graph = redactor, graph
        attempt.strategy = sub.strategy
        attempt.warnings.extend(sub.warnings)
        for error in sub.errors:
            attempt.fail(f"enforcing converged commit {commit[:12]}: {error.message}", error.phase)
        if sub.status in (Status.FAILED, Status.ERROR):
            attempt.status = Status.FAILED
        seen = {k: parse_time(v) for k, v in state.drift_seen.items()}
        items = tuple(self._drift_item(f, seen.get(f.task.key, attempt.started_at)) for f in sub.findings)
        attempt.rollout = replace(attempt.rollout, enforced=Enforcement(
            commit, sub.status, self._enforce_reason(sub), drift=items, apply=sub.apply))
        log.info("enforced converged commit %s: %s", commit[:12], sub.status.value)
        return state

    def _undecided(self, attempt: _Attempt, state: AgentState, options: CycleOptions) -> bool:
        """Did the fetched commit fail before the rollout gate could decide whether to apply it (its
        plan, syntax check, check run, or rollout.yml), so that the host's converged commit is enforced
        instead? Only a new commit (not one the host converged to), in enforce mode, not check-only; on
        a host that converged to none yet, only when the commit has a rollout.yml (the report then says
        there is nothing to enforce; without one the report is as it always was)."""
        revision = attempt.revision
        return (revision is not None and revision.commit not in state.converged
                and (bool(state.converged) or (revision.path / ROLLOUT_FILE).is_file())
                and attempt.rollout is None and attempt.apply is None
                and attempt.phase in (Phase.PLAN, Phase.CHECK)
                and self.config.mode is Mode.ENFORCE and not options.check_only)

    def _enforce_undecided(self, attempt: _Attempt, state: AgentState, options: CycleOptions) -> AgentState:
        """The fetched commit C failed before the gate (``_undecided``): the report stays C's (its status,
        the phase it reached, its errors, each naming C), and the host's last converged commit is enforced
        as while C is held (``_enforce``); the rollout block's gate is ``undecided``."""
        assert attempt.revision is not None
        commit, status, phase = attempt.revision.commit, attempt.status, attempt.phase
        attempt.errors = [replace(e, message=f"commit {commit[:12]}: {e.message}")
                          if e.phase in (Phase.PLAN, Phase.CHECK) else e for e in attempt.errors]
        attempt.rollout = RolloutInfo(
            wave="", gate=GateState.UNDECIDED, policy_digest="",
            reason=f"not decided: commit {commit[:12]} failed at {phase.value}",
            enforcing_commit=state.converged[-1] if state.converged else None,
            checked_at=attempt.started_at if "check" in attempt.durations else None)
        state = self._enforce(attempt, state, options)
        attempt.status, attempt.phase = status, phase  # C's outcome; B's is in rollout.enforced
        return state

    @staticmethod
    def _enforce_reason(sub: _Attempt) -> str:
        if sub.errors:
            return sub.errors[0].message
        held = sub.rollout is not None and sub.rollout.gate is not GateState.ALLOWED
        fixed = sum(1 for f in sub.findings if f.actionable)
        reasons = {Status.IN_SYNC: "in sync", Status.PAUSED: "paused: drift not corrected",
                   Status.CORRECTED: f"corrected {fixed} drifted task(s)",
                   Status.DRIFTED: (sub.rollout.reason if held and sub.rollout else "drift not corrected")}
        return reasons.get(sub.status, sub.status.value)

    def _status_without_apply(self, verdict: RunVerdict, actionable: list[Finding],
                              pause: Pause | None) -> Status:
        if verdict.failed:
            return Status.FAILED
        if verdict.idle_roles:
            return Status.ERROR  # a role ran nothing: never in sync
        if actionable:
            return Status.PAUSED if policy.pause_active(pause, self.clock()) else Status.DRIFTED
        return Status.IN_SYNC

    def _apply(self, attempt: _Attempt, state: AgentState, check: RunVerdict,
               options: CycleOptions) -> AgentState:
        """Apply every playbook of the plan (the same set as the check: Ansible skips what is in sync,
        and a playbook may need what an earlier one sets), then check again."""
        assert attempt.revision is not None and attempt.plan is not None
        plan, commit = attempt.plan, attempt.revision.commit
        attempt.phase = Phase.APPLY
        applied = self._ansible(attempt, plan, RunMode.APPLY, "apply")
        apply_failed = self._judge(applied, plan, frozenset()).failed
        attempt.stats = applied.parsed.stats
        attempt.apply = ApplyResult(
            attempted=True, changed=applied.parsed.stats.changed,
            failed_tasks=tuple(FailedTask(t.task, t.message or "no message", t.item) for t in apply_failed))
        if apply_failed:
            attempt.status = Status.FAILED
            return state
        attempt.phase = Phase.RECHECK
        recheck = self._ansible(attempt, plan, RunMode.CHECK, "recheck")
        # The recheck's paths replace the check's: a file the apply created is named only now (a check
        # of a copy that would create its file names no dest, so the check watched its directory).
        self._hand_off_watch_set(plan, recheck, options)
        after = self._judge(recheck, plan, self._check_only_keys(state, commit))
        # The apply of these very playbooks succeeded: a task that fails in the check right after it
        # fails only in check mode. A failure no task result explains is no such evidence.
        check_only = tuple(t for t in after.failed if t.module)
        failed = tuple(t for t in after.failed if not t.module)
        recurring = drift.recurring_after_apply((*recheck.parsed.tasks, *after.unattributed))
        unverifiable = drift.check_only_findings(replace(after, failed=failed), self._playbook_names(plan),
                                                 check_only)
        attempt.findings = drift.with_recheck(attempt.findings, recurring, unverifiable)
        for task in failed:
            attempt.fail(f"task '{task.label}' failed: {task.message or 'no message'}", Phase.RECHECK)
        attempt.phase = Phase.DONE
        if failed or check.idle_roles:
            attempt.status = Status.FAILED if failed else Status.ERROR
            return state
        attempt.status = Status.CORRECTED
        return state.after_apply(commit, recurring={f.task.key for f in recurring},
                                 check_only={t.key for t in (*check_only, *after.check_only)})

    # -- report ------------------------------------------------------------------------------

    def _drift_items(self, attempt: _Attempt, state: AgentState) -> tuple[tuple[DriftItem, ...], AgentState]:
        if attempt.carried is not None:  # a held commit not checked again: its drift as last seen
            return attempt.carried, state
        state, seen = first_seen(state, [f.task.key for f in attempt.findings], attempt.started_at)
        if attempt.status is Status.CORRECTED:  # corrected drift starts afresh if it comes back
            fixed = {f.task.key for f in attempt.findings if f.actionable}
            state = replace(state, drift_seen={k: v for k, v in state.drift_seen.items() if k not in fixed})
        items = tuple(self._drift_item(f, seen.get(f.task.key, attempt.started_at)) for f in attempt.findings)
        return items, state

    @staticmethod
    def _drift_item(f: Finding, first_seen_at: datetime) -> DriftItem:
        return DriftItem(play=f.task.play, task=f.task.task, role=f.task.role or None, module=f.task.module,
                         kind=f.kind, diffs=f.task.diffs, first_seen_at=first_seen_at, reason=f.reason,
                         ansible_role=f.task.ansible_role, task_path=f.task.task_path, item=f.task.item)

    def _source_info(self, attempt: _Attempt, state: AgentState) -> SourceInfo:
        rev = attempt.revision
        if rev is None:
            return SourceInfo(url=redact_url(self.config.source.url), ref=self.config.source.ref,
                              commit=attempt.refused_commit,
                              previous_commit=state.last_commit,
                              signature=attempt.signature or Signature())
        return SourceInfo(url=rev.url, ref=rev.ref, commit=rev.commit, previous_commit=rev.previous_commit,
                          author=rev.author, committed_at=rev.committed_at, subject=rev.subject,
                          signature=rev.signature)

    def _report(self, attempt: _Attempt, state: AgentState,
                options: CycleOptions) -> tuple[Report, AgentState]:
        items, new_state = self._drift_items(attempt, state)
        d = attempt.durations
        report = Report(
            run_id=attempt.run_id, host=self.config.host, agent_version=__version__,
            trigger=options.trigger, mode=Mode.CHECK if options.check_only else self.config.mode,
            started_at=attempt.started_at, finished_at=self.clock(), source=self._source_info(attempt, state),
            roles=attempt.all_roles or (attempt.plan.roles if attempt.plan else ()),
            phase_reached=attempt.phase,
            status=attempt.status, drift=items, apply=attempt.apply, stats=attempt.stats,
            errors=tuple(attempt.errors),
            durations_s=Durations(fetch=d.get("fetch"), check=d.get("check"), apply=d.get("apply"),
                                  recheck=d.get("recheck"), total=d.get("total")),
            interval_s=int(self.config.schedule.interval_s), splay_s=int(self.config.schedule.splay_s),
            pause=attempt.pause, warnings=tuple(dict.fromkeys(attempt.warnings)),
            rollout=attempt.rollout,
        )
        report = replace(report, watch=watchservice.report_info(self.store.paths, options.trigger))
        return report, new_state
