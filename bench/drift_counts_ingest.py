"""What the drift inbox's per-task count triggers (migration 0012, SQLite) cost the ingest writer.

On two copies of a database bench/drift_inbox.py seeded (10,000 hosts, 100,000 current items; migrated to
0012 or later), one as migrated and one with the three triggers dropped, times `store.ingest_group`
batches of reports in-process, the two copies alternately round by round (the same hosts on both), in
three steps per batch of hosts:

- `first`: each host reports 10 drifting tasks: the seeded items are not the agent's keys, so its 10
  seeded items resolve and 10 new ones open (the UPDATE and INSERT triggers fire);
- `again`: the same report again (a later run): the writer UPDATEs every column of each item with the
  same state, kind, host and task (the UPDATE trigger's WHEN is false, it does nothing);
- `in sync`: the hosts report no drift: their items resolve (the UPDATE trigger fires).

Prints, per step, the median CPU time per report (this process: SQLite runs in it) with and without the
triggers, and their ratio; then whether the kept counts still equal the live aggregate.

    cp /tmp/inbox.db /tmp/a.db && gitops-collector migrate --db sqlite:////tmp/a.db
    .venv/bin/python bench/drift_counts_ingest.py --db /tmp/a.db --rounds 7 --batch 50
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.collector import db, store
from agent.report import DriftItem, DriftKind, Status, to_json
from tests.factory import BASE_TIME, make_report

ROLES = ("web", "db", "cache", "worker", "lb", "mq")  # as bench/drift_inbox.py seeds them
TASKS = [f"{role}: task {n}" for role in ROLES for n in range(10)]
TRIGGERS = ("drift_task_counts_insert", "drift_task_counts_delete", "drift_task_counts_update")
STEPS = ("first", "again", "in sync")
IDENTITY = "task, play, role, ansible_role, task_file"
LIVE = (f"SELECT {IDENTITY}, count(*), count(DISTINCT host), "
        + ", ".join(f"sum(kind = '{k.value}')" for k in DriftKind) + ", "
        + ", ".join(f"sum(state = '{s}')" for s in ("open", "acknowledged", "accepted"))
        + f" FROM review_items WHERE state != 'resolved' GROUP BY {IDENTITY}")


def reports(first: int, batch: int, step: str, at: int) -> list[tuple[object, bytes, object]]:
    out = []
    for i in range(first, first + batch):
        role = ROLES[i % len(ROLES)]
        drift = () if step == "in sync" else tuple(
            DriftItem(play=f"{role} servers", task=TASKS[(i + n) % len(TASKS)], role=role,
                      module="ansible.builtin.template", kind=DriftKind.CORRECTIVE, ansible_role=role,
                      task_path=f"roles/{role}/tasks/main.yml:{n}") for n in range(10))
        finished = BASE_TIME + timedelta(minutes=at)
        report = make_report(f"{role}{i:05d}.example.com", status=Status.DRIFTED if drift else Status.IN_SYNC,
                             drift=drift, roles=(role,), finished_at=finished)
        out.append((report, to_json(report).encode(), finished))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a SQLite file seeded by bench/drift_inbox.py, at 0012+")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=50, help="reports per ingest_group call")
    args = parser.parse_args()
    with sqlite3.connect(f"file:{args.db}?mode=ro", uri=True) as check:
        found = {n for (n,) in check.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    if not set(TRIGGERS) <= found:
        parser.error(f"--db: {args.db} has not the triggers of migration 0012: gitops-collector migrate it")
    tmp = tempfile.TemporaryDirectory()
    paths = {"with": f"{tmp.name}/with.db", "without": f"{tmp.name}/without.db"}
    for path in paths.values():
        shutil.copyfile(args.db, path)
    with sqlite3.connect(paths["without"]) as conn:
        for trigger in TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger}")
    engines = {name: db.create(f"sqlite:///{path}") for name, path in paths.items()}
    cpu: dict[tuple[str, str], list[float]] = {(n, s): [] for n in engines for s in STEPS}
    print(f"load average before timing: {os.getloadavg()[0]:.1f}")
    for r in range(args.rounds):
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        for name in order:
            for k, step in enumerate(STEPS):
                batch = reports(r * args.batch, args.batch, step, at=10 * r + k + 1)
                started = time.process_time()
                results = store.ingest_group(engines[name], batch)
                cpu[(name, step)].append((time.process_time() - started) * 1000 / args.batch)
                assert results == [True] * args.batch, results
    for step in STEPS:
        with_, without = (statistics.median(cpu[(n, step)]) for n in ("with", "without"))
        print(f"{step:8s} CPU per report: {with_:6.2f} ms with the triggers, {without:6.2f} ms without, "
              f"ratio {with_ / without:.2f}")
    print(f"load average after timing: {os.getloadavg()[0]:.1f}")
    with sqlite3.connect(paths["with"]) as conn:  # the kept counts still equal the live aggregate
        kept = sorted(conn.execute("SELECT * FROM drift_task_counts"))
        live = sorted(conn.execute(LIVE))
    print(f"counts equal to the live aggregate after the run: {kept == live} ({len(kept)} tasks)")
    for engine in engines.values():
        engine.dispose()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
