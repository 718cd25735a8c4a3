"""Group commit (`serve --group-commit`): store.ingest_batch, store.ingest_group (batched statements) and
GroupCommit with its token map, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from agent.collector import store
from agent.collector.context import CollectorSettings
from agent.collector.errors import ConflictError
from agent.collector.group_commit import GroupCommit
from agent.collector.store import Expectations
from agent.collector.tables import hosts, runs
from agent.report import Status, to_json
from tests.factory import BASE_TIME, make_report


def review_snapshot(e: Engine) -> list[list[str]]:
    """The drift review's tables: review_items without ids, review_hosts (repr: some columns are NULL)."""
    from agent.collector.tables import review_hosts, review_items
    with e.connect() as conn:
        return [sorted(repr(tuple(r)[1:] if t is review_items else tuple(r))
                       for r in conn.execute(select(t)).all()) for t in (review_items, review_hosts)]


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.mark.parametrize("write", [store.ingest_batch, store.ingest_group], ids=["savepoints", "batched"])
def test_a_batch_answers_each_report_as_ingest_would(engine: Engine, write: Any) -> None:
    first = make_report("web01.example.com")
    second = make_report("web02.example.com", status=Status.DRIFTED)
    other_host = make_report("web03.example.com", run_id=first.run_id)
    items = [(r, to_json(r).encode(), BASE_TIME) for r in (first, second, first, other_host)]
    results = write(engine, items)
    assert results[:3] == [True, True, False]  # the same report again in the batch: a duplicate
    assert isinstance(results[3], ConflictError)  # its run_id is taken by another host's report
    assert "already stored for another host" in str(results[3])
    assert count(engine, runs) == 2 and count(engine, hosts) == 2  # the refused one left the others stored
    # a later batch sees the earlier one: the same report is a duplicate, not stored twice
    assert write(engine, items[:1]) == [False]
    assert count(engine, runs) == 2


def test_concurrent_reports_share_commits_and_each_is_answered(engine: Engine,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = store.ingest_group

    def recording(engine: Engine, items: Any, **kw: Any) -> Any:
        sizes.append(len(items))
        return real(engine, items, **kw)

    monkeypatch.setattr(store, "ingest_group", recording)
    reports = [make_report(f"web{i:02d}.example.com") for i in range(30)]

    async def main() -> list[bool]:
        group = GroupCommit(engine, Expectations(), None, max_batch=8)
        return await asyncio.gather(*(group.ingest(r, to_json(r).encode(), received_at=BASE_TIME)
                                      for r in reports))

    assert asyncio.run(main()) == [True] * 30
    assert count(engine, runs) == 30
    assert sum(sizes) == 30 and max(sizes) == 8 and len(sizes) < 30  # grouped, and within max_batch


def test_a_batch_is_capped_in_bytes_too(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """max_batch_bytes bounds a batch's bodies; a body larger than the cap still goes, alone."""
    batches: list[list[int]] = []
    real = store.ingest_group

    def recording(engine: Engine, items: Any, **kw: Any) -> Any:
        batches.append([len(raw) for _, raw, _ in items])
        return real(engine, items, **kw)

    monkeypatch.setattr(store, "ingest_group", recording)
    reports = [make_report(f"web{i:02d}.example.com") for i in range(12)]
    bodies = [to_json(r).encode() for r in reports]
    cap = 3 * max(map(len, bodies))

    async def main() -> list[bool]:
        group = GroupCommit(engine, Expectations(), None, max_batch_bytes=cap)
        big = GroupCommit(engine, Expectations(), None, max_batch_bytes=1)
        first = await asyncio.gather(*(group.ingest(r, raw, received_at=BASE_TIME)
                                       for r, raw in zip(reports[:10], bodies[:10], strict=True)))
        second = await asyncio.gather(*(big.ingest(r, raw, received_at=BASE_TIME)
                                        for r, raw in zip(reports[10:], bodies[10:], strict=True)))
        return [*first, *second]

    assert asyncio.run(main()) == [True] * 12
    assert count(engine, runs) == 12
    capped, alone = batches[:-2], batches[-2:]
    assert sum(map(len, capped)) == 10 and max(map(sum, capped)) <= cap and max(map(len, capped)) == 3
    assert alone == [[len(bodies[10])], [len(bodies[11])]]


def test_a_failed_transaction_fails_every_report_of_its_batch(engine: Engine,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(engine: Engine, items: Any, **kw: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(store, "ingest_group", broken)
    reports = [make_report(f"web{i:02d}.example.com") for i in range(3)]

    async def main() -> list[Any]:
        group = GroupCommit(engine, Expectations(), None)
        return await asyncio.gather(*(group.ingest(r, to_json(r).encode(), received_at=BASE_TIME)
                                      for r in reports), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, OSError) and str(r) == "disk full" for r in results)
    assert count(engine, runs) == 0


@pytest.fixture
def settings() -> CollectorSettings:
    return CollectorSettings(group_commit=True)  # the app below stores through GroupCommit


def test_the_api_answers_through_group_commit(send: Any, engine: Engine, collector: Any) -> None:
    assert collector.group is not None
    report = make_report("web01.example.com")
    created = send(report)
    assert (created.status_code, created.json()) == (201, {"run_id": report.run_id, "result": "created"})
    again = send(report)
    assert (again.status_code, again.json()["result"]) == (200, "duplicate")
    taken = send(make_report("web02.example.com", run_id=report.run_id))
    assert taken.status_code == 409 and "already stored for another host" in taken.json()["error"]
    assert count(engine, runs) == 1


def test_batched_statements_store_what_one_by_one_stores(engine: Engine) -> None:
    """Hosts, roles, drift, commits and the hosts' commits after a batch with two reports of one host (the
    newer wins, in either order) are what report-by-report ingest leaves."""
    from agent.collector.tables import commits, drift_items, host_commits, host_roles
    from tests.factory import COMMIT_A, COMMIT_B, drift_item

    older = make_report("web01.example.com", status=Status.DRIFTED, finished_at=BASE_TIME,
                        drift=(drift_item("task a"),))
    newer = make_report("web01.example.com", finished_at=BASE_TIME + timedelta(minutes=5), roles=("web", "lb"))
    other = make_report("db01.example.com", status=Status.DRIFTED, drift=(drift_item("t1"), drift_item("t2")))
    # a batch before: hosts, drift items and last checks that the batch then updates (t0 stays, t1 again)
    before = [make_report("db01.example.com", status=Status.DRIFTED, finished_at=BASE_TIME - timedelta(hours=1),
                          drift=(drift_item("t0"), drift_item("t1"))),
              make_report("app01.example.com", status=Status.DRIFTED, finished_at=BASE_TIME - timedelta(hours=1),
                          drift=(drift_item("t9"),))]
    fixed = make_report("app01.example.com", finished_at=BASE_TIME + timedelta(minutes=1))
    # a batch after: a report older than the stored one (its roles must not replace the host's), and a new
    # host whose roles change in the same batch as another's stay
    late = make_report("web01.example.com", finished_at=BASE_TIME - timedelta(hours=2), roles=("db",),
                       commit=COMMIT_B)
    again = make_report("db01.example.com", finished_at=BASE_TIME + timedelta(hours=1), roles=(), commit=COMMIT_B)
    bare = make_report("bare01.example.com", commit=None, roles=())  # no commit: no pair
    fresh = make_report("new01.example.com", roles=("web", "web", "cache"))
    first = [(r, to_json(r).encode(), BASE_TIME - timedelta(minutes=30)) for r in before]
    items = [(r, to_json(r).encode(), BASE_TIME + timedelta(minutes=6)) for r in (newer, other, older, fixed)]
    after = [(r, to_json(r).encode(), BASE_TIME + timedelta(hours=2)) for r in (late, again, fresh, bare)]
    assert store.ingest_group(engine, first) == [True, True]
    assert store.ingest_group(engine, items) == [True, True, True, True]
    assert store.ingest_group(engine, after) == [True, True, True, True]

    def snapshot(e: Engine) -> Any:
        with e.connect() as conn:
            return [sorted(tuple(r) for r in conn.execute(select(t)).all())
                    for t in (hosts, host_roles, drift_items, commits, runs, host_commits)]

    import tempfile

    from agent.collector import db
    with tempfile.TemporaryDirectory() as tmp:
        reference = db.create(f"sqlite:///{tmp}/ref.db")
        db.prepare(reference)
        for r, raw, at in [*first, *items, *after]:
            store.ingest(reference, r, raw, received_at=at)
        got, want = snapshot(engine), snapshot(reference)
        reference_review = review_snapshot(reference)
        reference.dispose()
    drop_ids = [lambda rows: rows, lambda rows: rows, lambda rows: [r[1:] for r in rows], lambda rows: rows,
                lambda rows: rows, lambda rows: rows]
    assert [f(g) for f, g in zip(drop_ids, got, strict=True)] == \
        [f(w) for f, w in zip(drop_ids, want, strict=True)]
    assert review_snapshot(engine) == reference_review  # the drift items too (docs/drift-review.md)
    with engine.connect() as conn:  # what the reference holds too: the newer report's roles, late's ignored
        roles = sorted(tuple(r) for r in conn.execute(select(host_roles)).all())
    assert roles == [("app01.example.com", "web"), ("new01.example.com", "cache"), ("new01.example.com", "web"),
                     ("web01.example.com", "lb"), ("web01.example.com", "web")]
    assert got[-1] == [(COMMIT_A, h) for h in ("app01.example.com", "db01.example.com", "new01.example.com",
                                              "web01.example.com")] + [(COMMIT_B, "db01.example.com"),
                                                                       (COMMIT_B, "web01.example.com")]


def test_a_refused_report_fails_only_itself(engine: Engine) -> None:
    good = make_report("web01.example.com")
    bad = make_report("web02.example.com", interval_s=2**40)  # over the column: refused before the database
    items = [(r, to_json(r).encode(), BASE_TIME) for r in (good, bad)]
    results = store.ingest_group(engine, items)
    assert results[0] is True and "interval_s" in str(results[1])
    assert count(engine, runs) == 1


def test_a_revoked_token_is_refused_at_once_despite_the_cache(client: Any, engine: Engine, collector: Any,
                                                            token_for: Any, send: Any) -> None:
    from agent.collector import tokens
    from tests.factory import BASE_TIME as now

    secret = token_for("web01.example.com")
    assert send(make_report("web01.example.com"), secret).status_code == 201  # the token is in the map now
    assert collector.group.principals  # cached
    tokens.revoke(engine, "web01.example.com", now=now)
    refused = send(make_report("web01.example.com"), secret)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    assert count(engine, runs) == 1
    assert tokens.hash_token(secret) not in collector.group.principals  # dropped: asked again next time
    assert send(make_report("web01.example.com"), secret).status_code == 401
    reader = tokens.create(engine, tokens.TokenKind.READER, "alice", now=now)[1]
    assert send(make_report("web01.example.com"), reader).status_code == 403
    assert send(make_report("web01.example.com"), "nope").status_code == 401


@pytest.mark.parametrize("body", [b"{}", b"not json", b"x" * (6 * 1024 * 1024), "another host"])
def test_a_revoked_token_is_refused_before_its_bodys_error_despite_the_cache(
        client: Any, engine: Engine, collector: Any, token_for: Any, send: Any, body: bytes | str) -> None:
    """Every refusal a request can get before its batch (empty, not JSON, too large, another host's)
    is a 401 once the token is revoked, though the map still holds it as valid."""
    from agent.collector import tokens
    from tests.factory import BASE_TIME as now

    secret = token_for("web01.example.com")
    assert send(make_report("web01.example.com"), secret).status_code == 201  # the token is in the map now
    content = to_json(make_report("db01.example.com")).encode() if body == "another host" else body
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    assert client.post("/api/v1/reports", content=content, headers=headers).status_code in (400, 403, 413, 422)
    tokens.revoke(engine, "web01.example.com", now=now)
    refused = client.post("/api/v1/reports", content=content, headers=headers)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]


def test_a_batch_the_database_refuses_is_stored_again_report_by_report(engine: Engine,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement of one report fails inside the batched transaction: nothing of that transaction stays,
    and the retry with a savepoint per report stores the others and fails only that one."""
    from sqlalchemy.exc import DataError

    real = store._drift_rows

    def refusing(report: Any) -> Any:  # the drift rows of both ways of storing (batched and one by one)
        if report.host == "web02.example.com":
            raise DataError("INSERT", {}, Exception("value out of range"))
        return real(report)

    monkeypatch.setattr(store, "_drift_rows", refusing)
    reports = [make_report(f"web0{i}.example.com") for i in (1, 2, 3)]
    results = store.ingest_group(engine, [(r, to_json(r).encode(), BASE_TIME) for r in reports])
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], DataError)
    assert count(engine, runs) == 2 and count(engine, hosts) == 2


def test_a_valid_token_is_served_from_the_map_for_minutes_an_unknown_one_for_a_second(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.collector import group_commit, tokens

    secret = tokens.create(engine, tokens.TokenKind.INGEST, "web01.example.com", now=BASE_TIME)[1]
    asked: list[str] = []
    real = tokens.principals_of
    secrets = {tokens.hash_token(s): s for s in (secret, "nope")}

    def counting(engine: Engine, hashes: Any) -> Any:
        asked.extend(secrets[h] for h in hashes)
        return real(engine, hashes)

    monkeypatch.setattr(tokens, "principals_of", counting)
    clock = [1000.0]
    monkeypatch.setattr(group_commit.time, "monotonic", lambda: clock[0])
    group = GroupCommit(engine, Expectations(), None)

    def ask(s: str) -> Any:
        return asyncio.run(group.principal(s))[0]

    assert ask(secret).name == "web01.example.com" and ask("nope") is None and len(asked) == 2
    clock[0] += 60  # a minute on: the valid token still from the map, the unknown one asked again
    assert ask(secret).name == "web01.example.com" and ask("nope") is None and asked == [secret, "nope", "nope"]
    clock[0] += group_commit.VALID_CACHE_S
    assert ask(secret) is not None and asked[-1] == secret  # expired: asked again


def test_a_report_is_checked_once_on_its_way_through_group_commit(send: Any, collector: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """api.post_report checks each report (a 422 names the field) before it is queued; the batch, told so
    (ingest_group's `checked`), does not check it again."""
    assert collector.group is not None
    checked: list[str] = []
    real = store.check_storable

    def counting(report: Any) -> None:
        checked.append(report.run_id)
        real(report)

    monkeypatch.setattr(store, "check_storable", counting)
    reports = [make_report(f"web0{i}.example.com") for i in (1, 2)]
    assert [send(r).status_code for r in reports] == [201, 201]
    assert checked == [r.run_id for r in reports]
    bad = make_report("web03.example.com", interval_s=2**40)  # still refused, by the handler's check
    refused = send(bad)
    assert refused.status_code == 422 and "interval_s" in refused.json()["error"]


def test_a_batch_told_its_reports_are_checked_does_not_check_them(engine: Engine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(report: Any) -> None:
        raise AssertionError("checked again")

    monkeypatch.setattr(store, "check_storable", refuse)
    report = make_report("web01.example.com")
    assert store.ingest_group(engine, [(report, to_json(report).encode(), BASE_TIME)], checked=True) == [True]
    assert count(engine, runs) == 1


def test_several_reports_of_one_host_in_a_batch_are_recorded_in_rounds_as_one_by_one(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The drift review of a batch where hosts send several reports (opened, seen again, resolved as
    absent, corrected, one report older than the host's last check) is what ingest one by one leaves, and
    no report goes through the per-report path (`review_store.record_report`) on the way."""
    import tempfile

    from agent.collector import db, review_store
    from agent.collector.tables import review_items
    from agent.report import DriftKind
    from tests.factory import drift_item

    t = BASE_TIME
    batch = [
        make_report("web01.example.com", status=Status.DRIFTED, finished_at=t,
                    drift=(drift_item("a"), drift_item("b"))),
        make_report("db01.example.com", status=Status.DRIFTED, finished_at=t + timedelta(minutes=10),
                    drift=(drift_item("x"),)),
        make_report("web01.example.com", status=Status.DRIFTED, finished_at=t + timedelta(minutes=1),
                    drift=(drift_item("a"),)),  # b is gone from a complete check: resolved as absent
        make_report("db01.example.com", status=Status.DRIFTED, finished_at=t - timedelta(minutes=10),
                    drift=(drift_item("y"),)),  # older than db01's last check: opens nothing
        make_report("app01.example.com", status=Status.DRIFTED, finished_at=t,
                    drift=(drift_item("r", kind=DriftKind.RECURRING),)),
        make_report("web01.example.com", status=Status.CORRECTED, finished_at=t + timedelta(minutes=2),
                    drift=(drift_item("a"),)),  # corrected by the apply: resolved
        make_report("web01.example.com", status=Status.DRIFTED, finished_at=t + timedelta(minutes=3),
                    drift=(drift_item("a"),), commit="b" * 40),  # opened again, another commit
    ]
    items = [(r, to_json(r).encode(), t + timedelta(minutes=20)) for r in batch]

    with tempfile.TemporaryDirectory() as tmp:
        reference = db.create(f"sqlite:///{tmp}/ref.db")
        db.prepare(reference)
        for r, raw, at in items:
            store.ingest(reference, r, raw, received_at=at)
        want = review_snapshot(reference)
        reference.dispose()

    def one_by_one(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a report of the batch went through record_report")

    monkeypatch.setattr(review_store, "record_report", one_by_one)
    assert store.ingest_group(engine, items) == [True] * len(items)
    assert review_snapshot(engine) == want
    with engine.connect() as conn:  # what the reports say happened on web01 (db01's late y opens nothing)
        web01 = sorted(tuple(r) for r in conn.execute(
            select(review_items.c.task, review_items.c.state, review_items.c.resolution, review_items.c.checks)
            .where(review_items.c.host.in_(["web01.example.com", "db01.example.com"]))))
    assert web01 == [("a", "open", None, 1), ("a", "resolved", "corrected", 3), ("b", "resolved", "absent", 1),
                     ("x", "open", None, 1)]


def test_tokens_missed_together_are_looked_up_in_one_read_and_each_gets_its_own_answer(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A collector that starts meets every agent's token at once: the misses queued while a lookup runs
    share the next one (one thread hand-off, one read), and each request gets its own token's answer."""
    from agent.collector import tokens

    monkeypatch.setattr(tokens, "PRINCIPALS_PER_STATEMENT", 7)  # several statements in the one read
    ingest = {f"web{i:02d}.example.com": tokens.create(engine, tokens.TokenKind.INGEST, f"web{i:02d}.example.com",
                                                       now=BASE_TIME)[1] for i in range(30)}
    reader = tokens.create(engine, tokens.TokenKind.READER, "alice", now=BASE_TIME)[1]
    revoked_secret = tokens.create(engine, tokens.TokenKind.INGEST, "old.example.com", now=BASE_TIME)[1]
    tokens.revoke(engine, "old.example.com", now=BASE_TIME)
    group = GroupCommit(engine, Expectations(), None)
    secrets = [*ingest.values(), reader, revoked_secret, "nope", *ingest.values()]  # each valid one twice

    async def all_at_once() -> list[Any]:
        return list(await asyncio.gather(*(group.principal(s) for s in secrets)))

    answers = asyncio.run(all_at_once())
    assert group.lookups == 1
    names = [None if p is None else (p.kind, p.name) for p, _ in answers]
    assert names == [*((tokens.TokenKind.INGEST, h) for h in ingest), (tokens.TokenKind.READER, "alice"), None,
                     None, *((tokens.TokenKind.INGEST, h) for h in ingest)]
    assert [h for _, h in answers] == [tokens.hash_token(s) for s in secrets]
    assert asyncio.run(all_at_once()) == answers and group.lookups == 1  # from the map now


def test_a_request_that_goes_away_leaves_the_lookup_to_the_others_and_a_failed_lookup_fails_each(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.collector import tokens
    from agent.collector.errors import DatabaseError

    secret = tokens.create(engine, tokens.TokenKind.INGEST, "web01.example.com", now=BASE_TIME)[1]
    group = GroupCommit(engine, Expectations(), None)

    async def one_leaves() -> Any:
        leaving = asyncio.create_task(group.principal(secret))
        staying = asyncio.create_task(group.principal(secret))
        await asyncio.sleep(0)  # both wait for the same lookup
        leaving.cancel()
        return await staying, leaving.cancelled()

    (principal, _), cancelled = asyncio.run(one_leaves())
    assert cancelled and principal is not None and principal.name == "web01.example.com"

    def failing(engine: Engine, hashes: Any) -> Any:
        raise DatabaseError("database is locked")

    monkeypatch.setattr(tokens, "principals_of", failing)
    group = GroupCommit(engine, Expectations(), None)

    async def both_fail() -> list[Any]:
        return list(await asyncio.gather(group.principal(secret), group.principal("nope"),
                                         return_exceptions=True))

    assert [str(e) for e in asyncio.run(both_fail())] == ["database is locked"] * 2
    assert not group.principals  # nothing remembered: the next request asks again
    monkeypatch.undo()
    assert asyncio.run(group.principal(secret))[0] is not None and group.lookups == 2


def test_a_token_of_a_kind_this_collector_does_not_know_is_refused_alone(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """A newer collector sharing the database may write a kind this one does not know: that token grants
    nothing here (401), and the tokens looked up with it are answered as usual."""
    from sqlalchemy import update

    from agent.collector import tokens
    from agent.collector.tables import tokens as tokens_table

    good = tokens.create(engine, tokens.TokenKind.INGEST, "web01.example.com", now=BASE_TIME)[1]
    odd = tokens.create(engine, tokens.TokenKind.INGEST, "web02.example.com", now=BASE_TIME)[1]
    with engine.begin() as conn:
        conn.execute(update(tokens_table).where(tokens_table.c.name == "web02.example.com").values(kind="admin"))
    group = GroupCommit(engine, Expectations(), None)

    async def both() -> list[Any]:
        return list(await asyncio.gather(group.principal(good), group.principal(odd)))

    (first, _), (second, _) = asyncio.run(both())
    assert first is not None and first.name == "web01.example.com" and second is None and group.lookups == 1
    assert "a token of 'web02.example.com' has kind 'admin', unknown to this collector: refused" in caplog.text
    # the check of a token one at a time (no group commit; a refused body's `confirm`) says the same
    assert tokens.authenticate(engine, odd) is None and tokens.authenticate(engine, good) is not None


def test_no_request_waits_for_a_lookup_that_was_cancelled_and_a_failure_nobody_awaits_is_not_logged(
        engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import gc
    import threading

    from agent.collector import tokens
    from agent.collector.errors import DatabaseError

    secret = tokens.create(engine, tokens.TokenKind.INGEST, "web01.example.com", now=BASE_TIME)[1]
    release = threading.Event()

    def slow(engine: Engine, hashes: Any) -> Any:
        release.wait(5)
        raise DatabaseError("database is locked")

    monkeypatch.setattr(tokens, "principals_of", slow)
    group = GroupCommit(engine, Expectations(), None)

    async def lookup_cancelled() -> BaseException | None:
        waiting = asyncio.create_task(group.principal(secret))
        queued = asyncio.create_task(group.principal("another"))
        await asyncio.sleep(0.05)  # the lookup of the first reads; the second waits in the queue for the next
        assert group._looking_up is not None
        group._looking_up.cancel()  # as when the loop ends
        release.set()
        results = await asyncio.wait_for(asyncio.gather(waiting, queued, return_exceptions=True), 3)
        return next((r for r in results if not isinstance(r, asyncio.CancelledError)), None)

    assert asyncio.run(lookup_cancelled()) is None  # both cancelled, neither left waiting
    release.clear()
    group = GroupCommit(engine, Expectations(), None)

    async def all_go_away() -> Any:
        leaving = asyncio.create_task(group.principal(secret))
        await asyncio.sleep(0)
        answer = group._missed[tokens.hash_token(secret)]  # the lookup's answer, before the lookup takes it
        await asyncio.sleep(0.05)
        leaving.cancel()
        release.set()  # the read fails with nobody waiting for it
        await asyncio.sleep(0.2)
        gc.collect()
        return answer

    with caplog.at_level("ERROR", logger="asyncio"):
        answer = asyncio.run(all_go_away())
        # its exception was read (else asyncio logs "Future exception was never retrieved" when it goes)
        assert not answer._log_traceback and isinstance(answer.exception(), DatabaseError)
        del answer
        gc.collect()
    assert "never retrieved" not in caplog.text
