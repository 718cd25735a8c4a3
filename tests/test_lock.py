"""The cycle lock is an OS lock: a second invocation waits or says who holds it; a killed holder
leaves no stale lock."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.errors import LockedError
from agent.lock import cycle_lock

HOLD = """
import sys, time
from pathlib import Path
from agent.lock import cycle_lock
with cycle_lock(Path(sys.argv[1]), wait_s=0):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@contextmanager
def hold(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """A separate process holding the lock for `seconds` (killed on exit)."""
    with subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        try:
            yield proc
        finally:
            proc.kill()


def test_second_cycle_is_refused_with_the_holder(tmp_path: Path, cli, write_config, app_repo) -> None:
    config = write_config(app_repo.path)
    with hold(tmp_path / "state" / "lock", 60) as holder:
        result = cli("run", "--config", str(config))
    assert result.code == 75  # EX_TEMPFAIL: try again later (not 1, a failed run)
    assert len(result.err.splitlines()) == 1
    assert f"another gitops-agent cycle is running on {tmp_path / 'state'} (pid {holder.pid})" in result.err
    assert not (tmp_path / "state" / "last_run.json").exists()  # nothing ran


def test_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    with hold(tmp_path / "lock", 60) as holder:
        with pytest.raises(LockedError), cycle_lock(tmp_path / "lock", wait_s=0.2):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with cycle_lock(tmp_path / "lock", wait_s=0):
            assert (tmp_path / "lock").exists()


def test_waiter_gets_the_lock_when_released(tmp_path: Path) -> None:
    with hold(tmp_path / "lock", 0.5):
        started = time.monotonic()
        with cycle_lock(tmp_path / "lock", wait_s=10):
            waited = time.monotonic() - started
    assert 0.2 < waited < 10
