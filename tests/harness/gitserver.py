"""A read-only Git server for test hosts: `git daemon` serving bare repositories over git:// on one address.

    with GitDaemon(base, "10.213.9.1") as server:      # git://10.213.9.1/fleet.git
        server.stop()                                  # "the Git server is down"
        server.start()

Hosts clone and fetch from it; tests push to the bare repository through its path, never over the wire.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


class GitDaemon:
    def __init__(self, base: Path, address: str, port: int = 9418) -> None:
        self.base, self.address, self.port = base, address, port
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"git://{self.address}:{self.port}/{name}"

    def start(self, timeout_s: float = 10.0) -> None:
        self.process = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--informative-errors", f"--base-path={self.base}",
             f"--listen={self.address}", f"--port={self.port}", str(self.base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"git daemon exited with {self.process.returncode}") from None
                time.sleep(0.05)
        raise TimeoutError(f"git daemon not listening on {self.address}:{self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> GitDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
