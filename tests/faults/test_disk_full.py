"""Out of disk: with the outbox, or the whole state_dir, on a full file system the run prints one error
line (no traceback), delivers the backlog and this run's report (from memory when it could not be
written), and keeps every report that can be kept.

A full file system needs a mount: these tests mount a small tmpfs and fill it, so they need root. CI runs
as root (and fails them if it cannot mount); elsewhere they are skipped, saying why."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.outbox import Outbox
from agent.report import Status
from tests.factory import make_report
from tests.faults.conftest import HOST, Agent, Collector, cheap_repo, with_collector

pytestmark = pytest.mark.ansible


def _cannot(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the disk-full tests: {reason}")
    pytest.skip(f"disk-full tests skipped: {reason} (CI runs them as root)")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (created) for the duration; needs root."""
    if os.geteuid() != 0:
        _cannot("they need root to mount a small tmpfs and fill it")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        _cannot(f"mount -t tmpfs failed: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` until it refuses another byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        (folder / "probe").write_bytes(b"x" * 4096)
    return filler


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("gitops-agent: error:")]


def test_a_full_outbox_still_delivers_the_backlog_and_this_report(agent: Callable[..., Agent],
                                                                   collector: Collector, tmp_path: Path) -> None:
    repo = cheap_repo(tmp_path / "origin")
    a = agent(repo.path, **with_collector(collector))
    with small_tmpfs(a.state_dir / "outbox", "512k") as outbox_dir:
        box = Outbox(outbox_dir)
        backlog = [make_report(HOST, status=Status.DRIFTED) for _ in range(3)]  # waited while the collector was away
        for report in backlog:
            box.put(report)
        fill(outbox_dir)
        result = a.run("run", "--json", "--check")
        assert "Traceback" not in result.stderr, result.stderr
        report = json.loads(result.stdout)
        assert result.returncode == 2 and report["status"] == "drifted"
        (line,) = error_lines(result.stderr)
        assert "the outbox" in line and "No space left on device" in line and report["run_id"] in line
        assert box.pending() == []  # the backlog was delivered although nothing can be written
    stored = collector.runs()
    assert set(stored) == {r.run_id for r in backlog} | {report["run_id"]}
    assert a.last_run()["run_id"] == report["run_id"]  # kept where there was room
    assert a.records()[report["run_id"]]["report"]["run_id"] == report["run_id"]  # spooled at the next start


def test_a_full_state_dir_reports_from_memory(agent: Callable[..., Agent], collector: Collector,
                                             tmp_path: Path) -> None:
    repo = cheap_repo(tmp_path / "origin")
    a = agent(repo.path, **with_collector(collector))
    with small_tmpfs(a.state_dir, "64m"):
        first = a.run("run", "--json", "--check")
        assert first.returncode == 2, first.stderr
        filler = fill(a.state_dir)
        result = a.run("run", "--json", "--check")
        assert "Traceback" not in result.stderr and result.stdout, (result.returncode, result.stderr)
        report = json.loads(result.stdout)
        assert result.returncode == 74 and report["status"] == "error"  # EX_IOERR: the disk
        assert "No space left on device" in report["errors"][-1]["message"]
        (line,) = error_lines(result.stderr)
        assert report["run_id"] in line and "the outbox" in line and "last_run.json" in line
        assert report["run_id"] in collector.runs()  # delivered from memory
        filler.unlink()
        again = a.run("run", "--json", "--check")  # with room again, nothing was left half done
        assert again.returncode == 2 and not error_lines(again.stderr), again.stderr
        assert a.records() == {} and list((a.state_dir / "outbox").glob("*.json")) == []
    assert set(collector.runs()) == {json.loads(r.stdout)["run_id"] for r in (first, result, again)}
