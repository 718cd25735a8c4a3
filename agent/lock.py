"""One cycle at a time per state directory: an flock the kernel releases when the process dies."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from agent.errors import LockedError


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return f" (pid {text})" if text else ""


@contextlib.contextmanager
def cycle_lock(path: Path, *, wait_s: float, poll_s: float = 0.1) -> Iterator[None]:
    """Hold an exclusive lock on `path`; wait up to wait_s for it, then raise LockedError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"another gitops-agent cycle is running on {path.parent}{_holder(fd)}; "
                        f"waited {wait_s:g}s") from None
                time.sleep(poll_s)
        with contextlib.suppress(OSError):  # the holder's pid is only a hint (a full disk refuses it)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
