"""The durable outbox: crash-safe files, oldest first, quarantine, bounds and compaction."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from agent.outbox import Outbox, choose_victim
from agent.report import Status, from_json
from tests.factory import make_report

S, D, F, E, P, C = "in_sync", "drifted", "failed", "error", "paused", "corrected"


def test_put_writes_a_private_file_that_round_trips(tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    report = make_report(status=Status.DRIFTED)
    entry = outbox.put(report)
    assert stat.S_IMODE(entry.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "outbox").stat().st_mode) == 0o700
    assert from_json(outbox.read(entry)) == report
    assert (entry.run_id, entry.status) == (report.run_id, "drifted")
    assert not [p for p in entry.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_pending_is_oldest_first_and_ignores_other_files(tmp_path):
    outbox = Outbox(tmp_path)
    reports = [make_report() for _ in range(5)]
    for r in reports:
        outbox.put(r)
    (tmp_path / ".half-written.json.tmp").write_text("{")
    (tmp_path / "notes.txt").write_text("x")
    assert [e.run_id for e in outbox.pending()] == [r.run_id for r in reports]


def test_remove_after_delivery(tmp_path):
    outbox = Outbox(tmp_path)
    entry = outbox.put(make_report())
    outbox.remove(entry)
    outbox.remove(entry)  # twice is harmless (another flush got there first)
    assert outbox.pending() == []


def test_quarantine_keeps_the_reason_and_can_be_requeued(tmp_path):
    outbox = Outbox(tmp_path)
    bad, good = outbox.put(make_report()), outbox.put(make_report())
    outbox.quarantine(bad, "HTTP 422: drift[0].kind: 'x' is not one of ...")
    assert [e.run_id for e in outbox.pending()] == [good.run_id]
    (q,) = outbox.quarantined()
    assert q.entry.run_id == bad.run_id
    assert q.reason.startswith("HTTP 422: drift[0].kind")
    assert q.quarantined_at is not None
    assert stat.S_IMODE(q.entry.path.stat().st_mode) == 0o600
    assert outbox.requeue_quarantined() == 1
    assert [e.run_id for e in outbox.pending()] == [bad.run_id, good.run_id]
    assert outbox.quarantined() == []


@pytest.mark.parametrize(("statuses", "victim"), [
    ([S, S, S], 0),            # consecutive in-sync runs go first
    ([D, S, D, S, S], 3),      # ...even when a lone in-sync run is older
    ([S, D, S], 0),            # then any in-sync run but the newest
    ([P, D, P], 0),            # then paused ones
    ([D, F, E, C, S], None),   # drift, failures, errors and corrections never; the newest never
    ([S], None),
    ([], None),
])
def test_choose_victim(statuses, victim):
    assert choose_victim(statuses) == victim


def test_count_bound_compacts_in_sync_runs_and_counts_them_in_the_next_report(tmp_path):
    outbox = Outbox(tmp_path, max_reports=3)
    drifted = outbox.put(make_report(status=Status.DRIFTED))
    for _ in range(4):
        outbox.put(make_report())
    pending = outbox.pending()
    assert len(pending) == 3
    assert pending[0].run_id == drifted.run_id
    # 2 dropped so far: the 4th put dropped one and the 5th carried it in its report, then dropped one
    assert from_json(outbox.read(pending[-1])).compacted == 1
    assert outbox.compacted_count() == 1
    newest = outbox.put(make_report(status=Status.FAILED))
    assert from_json(outbox.read(newest)).compacted == 1


def test_every_dropped_report_is_counted_exactly_once(tmp_path):
    outbox = Outbox(tmp_path, max_reports=2)
    for puts, i in enumerate(range(20), start=1):
        outbox.put(make_report(status=Status.DRIFTED if i % 7 == 3 else Status.IN_SYNC))
        pending = outbox.pending()
        carried = sum(from_json(outbox.read(e)).compacted for e in pending)
        assert carried + outbox.compacted_count() == puts - len(pending)


def test_byte_bound(tmp_path):
    size = len(Outbox(tmp_path / "probe").put(make_report()).path.read_bytes())
    outbox = Outbox(tmp_path / "outbox", max_bytes=size * 3 + size // 2)
    for _ in range(6):
        outbox.put(make_report())
    assert len(outbox.pending()) == 3
    carried = sum(from_json(outbox.read(e)).compacted for e in outbox.pending())
    assert carried + outbox.compacted_count() == 3


def test_drift_failures_and_errors_are_never_compacted(tmp_path):
    outbox = Outbox(tmp_path, max_reports=2)
    kept = [outbox.put(make_report(status=s)) for s in (Status.DRIFTED, Status.FAILED, Status.ERROR,
                                                        Status.CORRECTED)]
    assert [e.run_id for e in outbox.pending()] == [e.run_id for e in kept]
    assert outbox.compacted_count() == 0


def test_names_stay_ordered_when_the_clock_stalls(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_000_000_000)
    outbox = Outbox(tmp_path)
    reports = [make_report() for _ in range(3)]
    for r in reports:
        outbox.put(r)
    assert [e.run_id for e in outbox.pending()] == [r.run_id for r in reports]


def test_stale_temp_files_from_a_crash_are_cleaned(tmp_path):
    outbox = Outbox(tmp_path)
    leftover = tmp_path / ".000-in_sync-x.json.abc.tmp"
    leftover.write_text("{")
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    outbox.put(make_report())
    assert not leftover.exists()


def test_hostile_run_id_cannot_escape_the_directory(tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    entry = outbox.put(make_report(run_id="../../etc/passwd"))
    assert entry.path.parent == tmp_path / "outbox"
    assert json.loads(entry.path.read_text())["run_id"] == "../../etc/passwd"
