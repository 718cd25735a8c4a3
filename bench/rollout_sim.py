"""Simulated fleet: N agents roll out a commit in waves against a real collector, without Ansible.

One process plays every agent, speaking the real protocol to `gitops-collector serve` on 127.0.0.1:
each agent asks ``GET /api/v1/rollouts/{commit}?policy=DIGEST`` every poll (sending the policy with
``PUT .../policy`` when the collector does not know it), decides with the agent's own gate
(agent.gate.decide_gate, agent.rollout_answer.facts_from_data), "applies" when allowed (no Ansible: the
outcome is drawn), and sends a report with its rollout block (``POST /api/v1/reports``, its own ingest
token) when its state changes: once waiting, once converged or failed.

Two rollouts, one after the other, on one collector:
  good  every host converges: the waves must open in order, each after the previous met its criteria
        plus the soak;
  bad   --bad-canaries canary hosts fail: the collector must halt the rollout, no host outside the
        canary wave may apply, and the halt must reach the agents within one poll of the failing report;
        every ask sent more than the collector's answer cache (2 s) after the break must say halted.

    .venv/bin/python bench/rollout_sim.py [--agents 1000] [--poll 5] [--soak 5] [--db sqlite|postgresql]

Bounded: --max-seconds per rollout; traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import secrets as secrets_mod
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.collector import db, tables, tokens
from agent.collector.tokens import TokenKind
from agent.gate import HostView, decide_gate
from agent.report import GateState, RolloutInfo, Status, WaveSize, to_json
from agent.rollout import assign_waves, parse_policy, wave_sizes
from agent.rollout_answer import facts_from_data
from tests.factory import make_report
from tests.live_collector import PG_ENV, CollectorProcess, fresh_database

ROLLOUT_CACHE_S = 2.0  # the collector's default `serve --rollout-cache`
POLICY = """\
version: 1
splay: {splay}s
waves:
  - name: canary
    groups: [canary]
  - name: early
    share: 5%
    soak: {soak}s
    criteria: {{converged: 90%, max_failed: 1}}
  - name: main
    share: 40%
    soak: {soak}s
    criteria: {{converged: 95%, max_failed: 2%}}
  - name: rest
    soak: {soak}s
    criteria: {{converged: 95%, max_failed: 2%}}
"""


@dataclass
class Agent:
    host: str
    wave: str
    groups: frozenset[str]
    token: str
    fail: bool = False
    seen_at: datetime | None = None
    applied_at: float | None = None
    reported: str | None = None
    halted_seen_at: float | None = None


@dataclass
class Sim:
    url: str
    commit: str
    text: str
    digest: str
    agents: list[Agent]
    sizes: tuple[WaveSize, ...]
    poll_s: float
    started: float = field(default_factory=time.monotonic)
    latencies: list[float] = field(default_factory=list)
    asks: int = 0
    retries: int = 0
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(64))
    report_waiting: bool = False
    failed_report_at: float | None = None  # when the report that broke the criteria was acknowledged
    # every ask: (sent at, answered at, the answer says halted), seconds since the rollout started
    ask_log: list[tuple[float, float, bool]] = field(default_factory=list)


async def call(client: httpx.AsyncClient, sim: Sim, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request, again after a dropped keep-alive connection (uvicorn closes idle ones after 5 s;
    the agent's sender retries the same way)."""
    for attempt in range(4):
        try:
            async with sim.gate:  # never more waiters than connections (httpx's pool is slow with thousands)
                return await client.request(method, url, **kwargs)
        except httpx.TransportError:
            sim.retries += 1
            if attempt == 3:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def report(
    client: httpx.AsyncClient, sim: Sim, agent: Agent, gate: GateState, reason: str, status: Status
) -> None:
    info = RolloutInfo(
        wave=agent.wave, gate=gate, reason=reason, policy_digest=sim.digest, wave_sizes=sim.sizes
    )
    body = make_report(
        agent.host,
        status=status,
        commit=sim.commit,
        rollout=info,
        finished_at=datetime.now(UTC),
        run_id=str(uuid.uuid4()),
        drift=(),
    )
    response = await call(
        client,
        sim,
        "POST",
        f"{sim.url}/api/v1/reports",
        content=to_json(body),
        headers={"Authorization": f"Bearer {agent.token}", "Content-Type": "application/json"},
    )
    response.raise_for_status()


async def ask(client: httpx.AsyncClient, sim: Sim, agent: Agent) -> dict[str, object]:
    url = f"{sim.url}/api/v1/rollouts/{sim.commit}?policy={sim.digest}"
    auth = {"Authorization": f"Bearer {agent.token}"}
    started = time.perf_counter()
    sent_at = time.monotonic() - sim.started
    response = await call(client, sim, "GET", url, headers=auth)
    if response.status_code == 404:
        put = await call(
            client,
            sim,
            "PUT",
            f"{sim.url}/api/v1/rollouts/{sim.commit}/policy?policy={sim.digest}",
            content=sim.text.encode(),
            headers=auth,
        )
        put.raise_for_status()
        response = await call(client, sim, "GET", url, headers=auth)
    sim.latencies.append(time.perf_counter() - started)
    sim.asks += 1
    response.raise_for_status()
    data: dict[str, object] = response.json()
    sim.ask_log.append((sent_at, time.monotonic() - sim.started, data.get("halted") is not None))
    return data


async def run_agent(
    client: httpx.AsyncClient, sim: Sim, agent: Agent, policy: object, stop: asyncio.Event
) -> None:
    await asyncio.sleep(random.uniform(0, sim.poll_s))  # agents' polls are spread over the interval
    view = HostView(agent.host, agent.wave, groups=agent.groups)
    # An agent that saw the halt is done (its next answers say the same until an operator resumes).
    while not stop.is_set() and agent.applied_at is None and agent.halted_seen_at is None:
        now = datetime.now(UTC)
        agent.seen_at = agent.seen_at or now
        facts = facts_from_data(await ask(client, sim, agent))
        decision = decide_gate(
            policy=policy,
            host=view,
            new_commit=True,
            facts=facts,  # type: ignore[arg-type]
            commit_seen_at=agent.seen_at,
            plan=None,
            now=now,
        )
        if decision.state is GateState.HALTED and agent.halted_seen_at is None:
            agent.halted_seen_at = time.monotonic() - sim.started
        if decision.allow:
            agent.applied_at = time.monotonic() - sim.started
            await report(
                client,
                sim,
                agent,
                GateState.ALLOWED,
                decision.reason,
                Status.FAILED if agent.fail else Status.IN_SYNC,
            )
            if (
                agent.fail
                and sim.failed_report_at is None
                and sum(a.fail and a.applied_at is not None for a in sim.agents) >= 2
            ):
                sim.failed_report_at = time.monotonic() - sim.started
            return
        if sim.report_waiting and agent.reported != decision.state.value:
            agent.reported = decision.state.value
            await report(client, sim, agent, decision.state, decision.reason, Status.DRIFTED)
        await asyncio.sleep(sim.poll_s)


async def rollout(
    url: str, agents: list[Agent], *, poll_s: float, soak_s: int, splay_s: int, max_s: float
) -> Sim:
    text = POLICY.format(soak=soak_s, splay=splay_s)
    policy = parse_policy(text)
    sizes = tuple(WaveSize(k, v) for k, v in wave_sizes(policy, {a.host: a.wave for a in agents}).items())
    sim = Sim(url, uuid.uuid4().hex + uuid.uuid4().hex[:8], text, policy.digest(), agents, sizes, poll_s)
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        tasks = [asyncio.create_task(run_agent(client, sim, a, policy, stop)) for a in agents]
        waiting = asyncio.gather(*tasks)
        try:
            await asyncio.wait_for(asyncio.shield(waiting), timeout=max_s)
        except TimeoutError:
            stop.set()
            await waiting
    return sim


def show(name: str, sim: Sim, order: list[str]) -> None:
    print(
        f"\n== {name}: {len(sim.agents)} agents, poll {sim.poll_s:g}s, {sim.asks} asks, "
        f"ask latency p50 {statistics.median(sim.latencies) * 1000:.0f} ms, "
        f"p99 {sorted(sim.latencies)[int(len(sim.latencies) * 0.99)] * 1000:.0f} ms, "
        f"{sim.retries} retried connections"
    )
    print(f"{'wave':8} {'hosts':>6} {'applied':>8} {'first apply s':>14} {'last apply s':>13}")
    for wave in order:
        members = [a for a in sim.agents if a.wave == wave]
        times = sorted(a.applied_at for a in members if a.applied_at is not None)
        first = f"{times[0]:.1f}" if times else "-"
        last = f"{times[-1]:.1f}" if times else "-"
        print(f"{wave:8} {len(members):>6} {len(times):>8} {first:>14} {last:>13}")


async def main_async(args: argparse.Namespace, url: str, db_url: str) -> int:
    hosts = [f"host{i:05d}.example.com" for i in range(args.agents)]
    canaries = set(hosts[: args.canaries])
    groups = {h: frozenset({"canary"} if h in canaries else {"all"}) for h in hosts}
    policy = parse_policy(POLICY.format(soak=args.soak, splay=args.splay))
    waves = assign_waves(policy, groups)
    engine = db.create(db_url)
    secrets = {h: tokens.TOKEN_PREFIX + secrets_mod.token_urlsafe(32) for h in hosts}
    with db.write(engine) as conn:  # one transaction: 1,000 token rows as `token create` would make them
        conn.execute(
            tables.tokens.insert(),
            [
                {
                    "kind": TokenKind.INGEST.value,
                    "name": h,
                    "token_hash": tokens.hash_token(s),
                    "prefix": s[:10],
                    "created_at": datetime.now(UTC),
                }
                for h, s in secrets.items()
            ],
        )
    engine.dispose()
    order = [w.name for w in policy.waves]
    problems = 0

    good = [Agent(h, waves[h], groups[h], secrets[h]) for h in hosts]
    sim = await rollout(
        url, good, poll_s=args.poll, soak_s=args.soak, splay_s=args.splay, max_s=args.max_seconds
    )
    show("good commit", sim, order)
    firsts = []
    for wave in order:
        times = [a.applied_at for a in good if a.wave == wave and a.applied_at is not None]
        firsts.append((min(times) if times else None, max(times) if times else None))
    in_order = all(
        a[1] is not None and b[0] is not None and a[1] <= b[0] + args.poll
        for a, b in itertools.pairwise(firsts)
    )
    everyone = all(a.applied_at is not None for a in good)
    print(
        f"every host applied: {everyone}; each wave's first apply after the previous wave's last: {in_order}"
    )
    problems += (not everyone) + (not in_order)

    bad_hosts = set(sorted(canaries)[: args.bad_canaries])
    bad = [Agent(h, waves[h], groups[h], secrets[h], fail=h in bad_hosts) for h in hosts]
    sim = await rollout(
        url,
        bad,
        poll_s=args.poll,
        soak_s=args.soak,
        splay_s=args.splay,
        max_s=args.max_seconds,  # ends when every agent applied or saw the halt
    )
    show(f"bad commit ({len(bad_hosts)} canaries fail)", sim, order)
    leaked = [a.host for a in bad if a.wave != "canary" and a.applied_at is not None]
    seen = sorted(a.halted_seen_at for a in bad if a.halted_seen_at is not None)
    print(f"hosts outside the canary wave that applied: {len(leaked)}")
    if sim.failed_report_at is not None and seen:
        delay = seen[0] - sim.failed_report_at
        print(
            f"criteria broken at {sim.failed_report_at:.1f}s; first agent saw the halt at {seen[0]:.1f}s "
            f"(+{delay:.1f}s; poll {args.poll:g}s); {len(seen)} agents saw it, the last at {seen[-1]:.1f}s"
        )
        problems += delay > args.poll
        # An answer may be cached for --rollout-cache (2 s): an ask sent later than that after the break
        # must say halted, however long it then waits in the queue.
        after = [a for a in sim.ask_log if a[0] > sim.failed_report_at + ROLLOUT_CACHE_S]
        stale = [a for a in after if not a[2]]
        print(
            f"asks sent more than {ROLLOUT_CACHE_S:g}s after the break: {len(after)}, "
            f"answered without the halt: {len(stale)}; ask round trip p50 "
            f"{statistics.median(a[1] - a[0] for a in sim.ask_log):.1f}s"
        )
        problems += bool(stale)
    else:
        print("the halt was NOT seen by any agent")
        problems += 1
    problems += bool(leaked)
    print("\nresult:", "ok" if not problems else f"{problems} problem(s)")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--canaries", type=int, default=10)
    parser.add_argument("--bad-canaries", type=int, default=2)
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between an agent's asks")
    parser.add_argument("--soak", type=int, default=5, help="soak of each wave after the first, seconds")
    parser.add_argument("--splay", type=int, default=3, help="splay of the policy, seconds")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    if args.db == "postgresql" and not os.environ.get(PG_ENV):
        raise SystemExit(f"--db postgresql needs {PG_ENV} (GITOPS_TEST_POSTGRES_URL=$(bash .ci/postgres-up))")
    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.db, Path(tmp)) as db_url:
        engine = db.create(db_url)
        db.prepare(engine)
        engine.dispose()
        collector = CollectorProcess(db_url).start()
        try:
            return asyncio.run(main_async(args, collector.url, db_url))
        finally:
            collector.stop()


if __name__ == "__main__":
    raise SystemExit(main())
