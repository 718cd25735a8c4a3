"""What the host itself can tell is wrong before a cycle starts Ansible: a state_dir that cannot hold
the agent's state, a collector token file that is missing or not private. `run` and `daemon` refuse
on these (exit 78, EX_CONFIG) instead of applying and finding out afterwards; `doctor` shows them
along with the checks that need the network.

Things only the network can tell (the collector down, a revoked token) never block a cycle: reports
wait in the outbox for those.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from agent.config import AgentConfig
from agent.config_values import private_file
from agent.errors import AgentError, ConfigError, StorageError

# The disk, not the configuration: full, over quota, failing.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})
WRITE_PROBE_BYTES = 4096  # a report is a few KB: a disk that cannot take this cannot take a report


class PermissionDeniedError(AgentError):
    """The agent's user may not do this (most commands that change state need root)."""


def os_error(e: OSError, what: str) -> AgentError:
    """An OSError as one of ours, by its cause: the disk (StorageError), permissions
    (PermissionDeniedError), else a path that is not what the configuration says (ConfigError)."""
    text = f"{what} ({e.strerror or e})"
    if e.errno in DISK_ERRNOS:
        return StorageError(text)
    if e.errno in (errno.EACCES, errno.EPERM):
        return PermissionDeniedError(text)
    return ConfigError(text)


def _first_existing(path: Path) -> Path | None:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return None


def check_state_dir(path: Path, *, write: bool) -> None:
    """state_dir is a directory (or can be made one) and, with `write`, takes a small file.

    Raises ConfigError (not a directory, read-only file system), PermissionDeniedError or StorageError
    (full disk), each naming state_dir and the reason in one line."""
    found = _first_existing(path)
    if found is not None and not found.is_dir():
        if found == path:
            raise ConfigError(f"state_dir {path} is not a directory (a file is in the way)")
        raise ConfigError(f"state_dir {path}: {found} is not a directory")
    if not write:
        return
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, f"state_dir {path}: cannot create it") from e
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-") as probe:
            probe.write(b"\0" * WRITE_PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        raise os_error(e, f"state_dir {path}: cannot write in it") from e


def check_token_file(config: AgentConfig) -> None:
    """With a collector configured: its token file exists (or, with collector.enrol, is still to come), is
    private (like ssh's rule for keys) and
    holds one token on one line. ConfigError naming the setting otherwise."""
    collector = config.collector
    if not collector.url:
        return
    origin = str(config.path or "config")
    if collector.token_file is None:
        raise ConfigError(f"{origin}: 'collector.url' is set but 'collector.token_file' is not")
    if collector.enrol and not collector.token_file.exists():
        return  # not enrolled yet: agent.enrolment writes it once an operator approves
    path = private_file(collector.token_file, origin, "collector.token_file")
    assert path is not None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{origin}: 'collector.token_file': {path}: cannot read it ({e})") from e
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"{origin}: 'collector.token_file': {path} must hold one token on one line")


def local_problem(config: AgentConfig) -> str | None:
    """The first problem the host can see before a cycle (state_dir aside: check_state_dir), or None."""
    try:
        check_token_file(config)
    except ConfigError as e:
        return str(e)
    return None
