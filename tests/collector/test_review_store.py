"""review_store's UPDATE of a drift item sets only the columns that changed (`_changed_values`): the row it
leaves is the row setting every column would leave, and a sighting that changes little names little."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, event, select, text

from agent.collector import drift_exceptions as dx
from agent.collector import review_store, rollout_ingest, store
from agent.collector.drift_review import ItemKey, Resolution, ReviewItem, TaskIdentity
from agent.collector.errors import ConflictError
from agent.collector.review_store import _changed_values, _values
from agent.collector.tables import review_items
from agent.report import Diff, DriftKind, Status, to_json
from tests.factory import BASE_TIME, COMMIT_A, COMMIT_B, drift_item, make_report

KEY = ItemKey("web01.example.com", TaskIdentity("web", "web servers", "web", "roles/web/tasks/main.yml",
                                                "nginx config"), "", 0)
times = st.integers(min_value=0, max_value=5).map(lambda h: BASE_TIME + timedelta(hours=h))
maybe_time = st.none() | times
kinds = st.lists(st.tuples(st.sampled_from(DriftKind), times), min_size=1, max_size=3).map(tuple)
items = st.builds(
    ReviewItem, key=st.just(KEY), first_seen_at=times, last_seen_at=times, kinds=kinds,
    checks=st.integers(1, 4), commits=st.lists(st.sampled_from([COMMIT_A, COMMIT_B]), max_size=2).map(tuple),
    commit_count=st.integers(0, 3), module=st.sampled_from(["template", "copy"]),
    task_path=st.sampled_from(["", "roles/web/tasks/main.yml:3"]), acknowledged_at=maybe_time,
    acknowledged_by=st.none() | st.sampled_from(["ana", "bo"]), accepted_by=st.none() | st.integers(1, 2),
    resolved_at=maybe_time, resolution=st.none() | st.sampled_from(Resolution), id=st.just(1))


@given(items, items)
def test_the_changed_columns_over_the_old_row_make_the_new_row(old: ReviewItem, new: ReviewItem) -> None:
    changed = _changed_values(old, new)
    assert {**_values(old), **changed} == _values(new)
    assert all(_values(old)[c] != v for c, v in changed.items())  # only what changed


def test_an_unchanged_item_sets_nothing_and_every_column_of_values_can_be_set() -> None:
    item = ReviewItem(key=KEY, first_seen_at=BASE_TIME, last_seen_at=BASE_TIME,
                      kinds=((DriftKind.CORRECTIVE, BASE_TIME),))
    assert _changed_values(item, item) == {}
    later = BASE_TIME + timedelta(hours=1)
    other = msgspec.structs.replace(
        item, first_seen_at=later, last_seen_at=later, kinds=((DriftKind.RECURRING, later),), checks=2,
        commits=(COMMIT_A,), commit_count=1, module="copy", task_path="x.yml:1", acknowledged_at=later,
        acknowledged_by="ana", accepted_by=3, resolved_at=later, resolution=Resolution.ABSENT)
    assert set(_changed_values(item, other)) == set(_values(item))  # no column of _values is left out


def updates_of(engine: Engine, run: Any) -> list[str]:
    """The columns each UPDATE of review_items that `run()` sends sets, as "column column ..."."""
    sets: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("UPDATE review_items SET"):
            set_list = re.sub(r" WHERE .*", "", statement.removeprefix("UPDATE review_items SET "),
                              flags=re.DOTALL)
            sets.append(" ".join(re.findall(r"(\w+)=", set_list)))  # SQLite's and psycopg's markers alike

    event.listen(engine, "before_cursor_execute", record)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return sets


def test_a_sighting_sets_only_what_it_changed_and_the_diff_hash_only_when_the_diff_changed(
        engine: Engine) -> None:
    drift = (drift_item(), drift_item("php config"))
    at = BASE_TIME

    def send(*drifts: Any, batched: bool) -> None:
        nonlocal at
        at += timedelta(minutes=30)
        report = make_report(status=make_report().status.DRIFTED, drift=drifts, finished_at=at)
        if batched:
            assert store.ingest_group(engine, [(report, to_json(report).encode(), at)]) == [True]
        else:
            assert store.ingest(engine, report, to_json(report).encode(), received_at=at)

    send(*drift, batched=True)
    for batched in (True, False):  # the group commit's executemany and store.ingest's own statements
        sets = updates_of(engine, lambda b=batched: send(*drift, batched=b))
        assert sets == ["last_seen_at checks"] * (1 if batched else 2)
    changed = dataclasses.replace(drift[0], diffs=(Diff("/etc/nginx/nginx.conf", "a\n", "b\n"),))
    sets = updates_of(engine, lambda: send(changed, drift[1], batched=True))
    assert sorted(sets) == ["last_seen_at checks", "last_seen_at checks diff_sha256"]
    with engine.connect() as conn:
        rows = conn.execute(select(review_items.c.task, review_items.c.checks, review_items.c.diff_sha256)
                            .order_by(review_items.c.task)).all()
    assert [(r.task, r.checks) for r in rows] == [("nginx config", 4), ("php config", 4)]
    assert rows[0].diff_sha256 == review_store.diff_sha256(changed) != rows[1].diff_sha256


def blocked_on_a_lock(engine: Engine, thread: threading.Thread) -> bool:
    """Whether `thread` (a review action) waits for a lock: on PostgreSQL a backend waiting on a row lock;
    on SQLite (one writer at a time) the thread still inside db.write after a while."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                if conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                     "AND datname = current_database()")).scalar_one():
                    return True
        elif thread.is_alive():
            time.sleep(0.5)
            return thread.is_alive()
        time.sleep(0.05)
    return False


def paused_ingest(engine: Engine, monkeypatch: Any, where: str, report: Any,
                  at: Any) -> tuple[threading.Thread, threading.Event]:
    """store.ingest of `report` in a thread, paused inside its transaction: after reading the host's items
    (where="read": at its active_exceptions call) or after all its writes, before the commit
    (where="written": at rollout_ingest.record_report). Returns the thread and the event that lets it go on."""
    reached, release = threading.Event(), threading.Event()
    target = (review_store, "active_exceptions") if where == "read" else (rollout_ingest, "record_report")
    real = getattr(*target)

    def pause(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            reached.set()
            release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(*target, pause)
    thread = threading.Thread(target=store.ingest, args=(engine, report, to_json(report).encode()),
                              kwargs={"received_at": at})
    thread.start()
    assert reached.wait(30)
    return thread, release


def drifting_item(engine: Engine) -> int:
    """Store one drifted report of web01 (one drift item) and return the item's id."""
    report = make_report(status=Status.DRIFTED, drift=(drift_item(),), finished_at=BASE_TIME)
    assert store.ingest(engine, report, to_json(report).encode(), received_at=BASE_TIME)
    with engine.connect() as conn:
        return int(conn.execute(select(review_items.c.id)).scalar_one())


def act_during(engine: Engine, ingest: threading.Thread, release: threading.Event,
               action: Callable[[], Any]) -> list[Exception]:
    """Run `action` in a thread while the paused `ingest` holds its transaction; once the action waits
    for a lock, let the ingest commit. Returns what the action raised."""
    errors: list[Exception] = []

    def run() -> None:
        try:
            action()
        except Exception as e:  # the caller checks
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert blocked_on_a_lock(engine, thread)
    finally:
        release.set()
        ingest.join(30)
        thread.join(30)
    return errors


def test_an_acknowledgement_waits_for_the_ingest_that_resolves_the_item_and_is_refused_after_it(
        engine: Engine, monkeypatch: Any) -> None:
    """Without the row lock the acknowledgement read the item open, and wrote it back open over the
    resolution once the ingest committed (PostgreSQL)."""
    item_id = drifting_item(engine)
    later = BASE_TIME + timedelta(minutes=30)
    converged = make_report(status=Status.IN_SYNC, finished_at=later)  # a complete check: resolved (absent)
    ingest, release = paused_ingest(engine, monkeypatch, "written", converged, later)
    errors = act_during(engine, ingest, release, lambda: review_store.acknowledge(
        engine, item_id, actor=review_store.Actor("ana", "cli"), reason="on it", now=later))
    assert [type(e) for e in errors] == [ConflictError]
    with engine.connect() as conn:
        row = conn.execute(select(review_items.c.state, review_items.c.resolution,
                                  review_items.c.acknowledged_by)).one()
    assert tuple(row) == ("resolved", "absent", None)


def test_an_acknowledgement_during_an_ingest_of_its_host_is_kept_and_so_is_the_sighting(
        engine: Engine, monkeypatch: Any) -> None:
    item_id = drifting_item(engine)
    later = BASE_TIME + timedelta(minutes=30)
    again = make_report(status=Status.DRIFTED, drift=(drift_item(),), finished_at=later)
    ingest, release = paused_ingest(engine, monkeypatch, "read", again, later)
    # it waits: the ingest read the host's items FOR UPDATE
    assert act_during(engine, ingest, release, lambda: review_store.acknowledge(
        engine, item_id, actor=review_store.Actor("ana", "cli"), reason="on it", now=later)) == []
    with engine.connect() as conn:
        row = conn.execute(select(review_items.c.state, review_items.c.acknowledged_by,
                                  review_items.c.checks)).one()
    assert tuple(row) == ("acknowledged", "ana", 2)


def test_an_exception_created_during_the_ingest_that_resolves_its_item_leaves_the_item_resolved(
        engine: Engine, monkeypatch: Any) -> None:
    """The exception's recheck reads the current items FOR UPDATE: without it, it read the item open and
    wrote it back accepted over the resolution (PostgreSQL)."""
    task = review_store.load_item(engine, drifting_item(engine)).key.task
    later = BASE_TIME + timedelta(minutes=30)
    converged = make_report(status=Status.IN_SYNC, finished_at=later)
    ingest, release = paused_ingest(engine, monkeypatch, "written", converged, later)
    exception = dx.DriftException(id=0, scope=dx.ExceptionScope.TASK, owner="ops", reason="known",
                                  ticket="T-1", created_at=later, expires_at=later + timedelta(days=3),
                                  task=task)
    assert act_during(engine, ingest, release, lambda: review_store.create_exception(
        engine, exception, actor=review_store.Actor("ana", "cli"), now=later)) == []
    with engine.connect() as conn:
        row = conn.execute(select(review_items.c.state, review_items.c.accepted_by,
                                  review_items.c.resolution)).one()
    assert tuple(row) == ("resolved", None, "absent")
