"""The one exception hierarchy. The core raises these; cli and the collector app translate them."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent reports on purpose. str(e) is one readable line."""


class ConfigError(AgentError):
    """The configuration file is missing, unreadable or invalid."""


class SourceError(AgentError):
    """Git could not fetch, resolve or check out the desired state."""


class SourceUnreachableError(SourceError):
    """No source (url or mirror) answered."""


class RewindError(SourceError):
    """The ref moved backwards or was rewritten and allow_rewind is off."""


class VerifyError(SourceError):
    """The commit's signature is missing, bad or untrusted."""


class PlanError(AgentError):
    """The repository's inventory or playbooks cannot be turned into a run plan for this host."""


class RunnerError(AgentError):
    """ansible-runner could not start or was stopped (timeout, cancel)."""


class RunTimeoutError(RunnerError):
    """The cycle ran past schedule.timeout and was stopped (its whole process group killed)."""


class RunCancelledError(RunnerError):
    """The run was cancelled because the agent is stopping (SIGTERM/SIGINT; its process group killed)."""


class LockedError(AgentError):
    """Another cycle holds the lock on this state directory."""


class StateError(AgentError):
    """The state directory is unusable."""


class StorageError(AgentError):
    """Writing failed for a reason of the disk, not of the configuration (full, quota, I/O error)."""


class UsageError(AgentError):
    """The command line is wrong (an unknown option, a bad value)."""


class ReportError(AgentError):
    """A report does not follow the schema."""


class RolloutError(PlanError):
    """The rollout policy (rollout.yml of the config repo) is invalid: a failed plan, nothing applied."""


class RolloutAnswerError(AgentError):
    """The collector's rollout answer is malformed: the gate treats it as an unreachable collector."""
