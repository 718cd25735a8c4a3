"""Fleet simulator: one process plays N agents speaking the real protocol against a real collector and a
real Git server (`git daemon`), without Ansible, and compares in the same run Git requests per minute with
plain polling (every agent asks Git) against the commit beacon (agents ask the collector).

For each N in --hosts (default 1000 and 10000):

1. **Plain polling**, --plain-seconds: every agent runs the equivalent of `git ls-remote` (a real git://
   upload-pack request, its ref advertisement read) once per --poll, at its fixed per-host offset.
2. **Beacon**, one --poll of steady state: every agent asks `GET /api/v1/heads` with If-None-Match once,
   at its offset; then a commit is pushed to the repository and a signed generic push hook tells the
   collector, which asks Git once. For another --poll plus --commit-splay, agents keep polling; an agent
   that sees the new head waits its commit splay, then asks Git (one upload-pack request, standing in for
   its fetch) and posts a real report (its own ingest token).

Printed per N: Git requests per minute (counted by the Git server from its log) for plain polling, and for
the beacon in steady state and in the window after the commit; beacon requests/s, their p99 and the
collector's CPU per request (from /proc, steady state); ingest reports/s, p50/p99 and lost (201 answers
missing from the database); a few UI page and API times at that fleet size; the simulator's own CPU;
and the load average at the start and the end of each size.
Every HTTP request opens a new connection, as the agent does; at most --concurrency are in flight, and
latencies are timed from when a request may start (the collector's and the connection's time, not the
simulator's own queue). Traffic goes only to 127.0.0.1.

    .venv/bin/python bench/fleet_sim.py                         # N = 1000 and 10000, poll 60s (~7 min)
    .venv/bin/python bench/fleet_sim.py --hosts 1000 --poll 20 --commit-splay 20   # quick
    .venv/bin/python bench/fleet_sim.py --serve-args --no-group-commit   # the old storage path

Needs `git daemon` (Debian package git-daemon-sysvinit or git's own `git daemon`, present with git).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.collector import db, tokens
from agent.collector.heads import sign
from agent.collector.tables import runs
from agent.collector.tokens import TokenKind
from agent.report import to_json
from bench.ingest_wrk import cpu_s
from tests.factory import BASE_TIME, make_report
from tests.live_collector import CollectorProcess, free_port, fresh_database

HOOK_SECRET = b"fleet-sim-hook-secret-0123456789"


# -- the Git server -------------------------------------------------------------------------------

class GitDaemon:
    """`git daemon` on 127.0.0.1 serving `base`; counts upload-pack requests from its --verbose log."""

    def __init__(self, base: Path) -> None:
        self.base, self.port = base, free_port()
        self.requests = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GitDaemon:
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={self.port}",
             f"--base-path={self.base}", "--export-all", "--verbose", "--max-connections=0",
             "--log-destination=stderr", str(self.base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._thread = threading.Thread(target=self._count, daemon=True)
        self._thread.start()
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return self
            time.sleep(0.05)
        raise RuntimeError("git daemon did not start")

    def _count(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            if b"Request upload-pack" in line:
                self.requests += 1

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


async def git_advertisement(port: int, path: str) -> dict[str, str]:
    """One real git:// upload-pack request (protocol v0): the ref advertisement, as `git ls-remote` reads it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"git-upload-pack {path}\0host=127.0.0.1\0".encode()
        writer.write(f"{len(request) + 4:04x}".encode() + request)
        await writer.drain()
        refs: dict[str, str] = {}
        while True:
            size = int(await reader.readexactly(4), 16)
            if size == 0:
                break
            line = (await reader.readexactly(size - 4)).split(b"\0")[0].decode().strip()
            sha, _, name = line.partition(" ")
            refs[name] = sha
        writer.write(b"0000")  # nothing wanted: the server ends the conversation
        await writer.drain()
        return refs
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# -- HTTP, one connection per request --------------------------------------------------------------

async def http(port: int, method: str, target: str, headers: dict[str, str], body: bytes = b"",
               ) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
                f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        raw = await reader.read(-1)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    top, _, rest = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return status, fields, rest


# -- the agents ------------------------------------------------------------------------------------

def offset(host: str, period: float, salt: str = "") -> float:
    digest = int(hashlib.sha256(f"{salt}{host}".encode()).hexdigest()[:12], 16)
    return (digest % 1_000_000) / 1_000_000 * period


@dataclass
class Tally:
    git_before: int = 0
    beacon_latencies: list[float] = field(default_factory=list)
    beacon_status: dict[int, int] = field(default_factory=dict)
    report_latencies: list[float] = field(default_factory=list)
    report_status: dict[str, int] = field(default_factory=dict)
    report_times: list[float] = field(default_factory=list)
    created: int = 0
    saw_new: int = 0


async def at(start: float, when: float) -> None:
    delay = start + when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def plain_agent(host: str, start: float, seconds: float, poll: float, git_port: int,
                      errors: list[str]) -> None:
    t = offset(host, poll)
    while t < seconds:
        await at(start, t)
        try:
            await git_advertisement(git_port, "/site.git")
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            errors.append(type(e).__name__)
        t += poll


async def beacon_agent(host: str, secret: str, start: float, until: float, poll: float, splay: float,
                       ports: tuple[int, int], source: str, tally: Tally, limit: asyncio.Semaphore,
                       known: str) -> None:
    collector_port, _ = ports
    head: str | None = known
    etag: str | None = f'"{known}"'  # in steady state an agent has asked before
    t = offset(host, poll)
    auth = {"Authorization": f"Bearer {secret}"}
    target = f"/api/v1/heads?source={source}&ref=main"
    while t < until:
        await at(start, t)
        headers = {**auth, **({"If-None-Match": etag} if etag else {})}
        try:
            async with limit:  # the latency is the collector's (and the connection's), not this queue's
                began = time.perf_counter()
                status, fields, body = await http(collector_port, "GET", target, headers)
                tally.beacon_latencies.append(time.perf_counter() - began)
        except OSError:
            status, fields, body = 599, {}, b""
        tally.beacon_status[status] = tally.beacon_status.get(status, 0) + 1
        if status == 200:
            new = json.loads(body)["commit"]
            etag = fields.get("etag")
            if head is not None and new != head:
                tally.saw_new += 1
                await asyncio.sleep(offset(host, splay, "commit-splay:"))
                await deliver(host, auth, new, ports, tally, limit)
            head = new
        t += poll


async def deliver(host: str, auth: dict[str, str], commit: str, ports: tuple[int, int], tally: Tally,
                  limit: asyncio.Semaphore) -> None:
    collector_port, git_port = ports
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
        await git_advertisement(git_port, "/site.git")  # the cycle's fetch asks Git
    report = make_report(host, finished_at=BASE_TIME)
    doc = json.loads(to_json(report))
    doc["source"]["commit"] = commit
    body = json.dumps(doc).encode()
    async with limit:
        began = time.perf_counter()
        try:
            status, _, _ = await http(collector_port, "POST", "/api/v1/reports",
                                      {**auth, "Content-Type": "application/json"}, body)
            key = str(status)
        except OSError as e:
            key = type(e).__name__
        tally.report_latencies.append(time.perf_counter() - began)
    tally.report_times.append(time.monotonic())
    tally.report_status[key] = tally.report_status.get(key, 0) + 1
    tally.created += key == "201"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


# -- one fleet size ----------------------------------------------------------------------------------

def commit(repo: Path, message: str) -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True).stdout
    (repo / "site.txt").write_text(message)
    git("add", "site.txt")
    git("-c", "user.name=sim", "-c", "user.email=sim@example.com", "commit", "-qm", message)
    return git("rev-parse", "HEAD").strip()


def run_size(n: int, args: argparse.Namespace, tmp: Path) -> None:
    base = tmp / f"git{n}"
    repo = base / "site.git"
    repo.mkdir(parents=True)
    subprocess.run(["git", "-C", str(repo), "init", "-q", "-b", "main"], check=True)
    commit(repo, "one")
    secret_file = tmp / f"hook{n}"
    secret_file.write_bytes(HOOK_SECRET)
    secret_file.chmod(0o600)
    log = tmp / f"collector{n}.log"
    with GitDaemon(base) as git, fresh_database(args.db, tmp / f"db{n}") as url:
        engine = db.create(url)
        db.prepare(engine)
        hosts = [f"host{i:05d}.sim" for i in range(n)]
        secrets = {info.name: s for info, s in tokens.create_many(engine, hosts, now=BASE_TIME)}
        reader = tokens.create(engine, TokenKind.READER, "sim", now=BASE_TIME)[1]
        source = f"git://127.0.0.1:{git.port}/site.git"
        server = CollectorProcess(url, None, "--heads-source", f"{source}#main", "--heads-poll", "60s",
                                  "--hook-secret-file", str(secret_file), *args.serve_args).start()
        assert server.proc is not None
        try:
            created = asyncio.run(simulate(n, args, git, server.port, server.proc.pid, source, secrets, reader,
                                           repo))
            with engine.connect() as conn:
                stored = conn.execute(select(func.count()).select_from(runs)).scalar_one()
            print(f"  database: {stored} runs stored, {max(created - stored, 0)} lost (answered 201, not stored)")
        finally:
            server.stop()
            log.write_text(server.log, encoding="utf-8")
            engine.dispose()
        errors = log.read_text(errors="replace").count("Traceback")
        if errors:
            print(f"  collector log: {errors} tracebacks (see {log})")


async def simulate(n: int, args: argparse.Namespace, git: GitDaemon, port: int, pid: int, source: str,
                   secrets: dict[str, str], reader: str, repo: Path) -> int:
    """Runs the phases and prints their figures; returns how many reports the collector answered 201."""
    poll, splay = args.poll, args.commit_splay
    limit = asyncio.Semaphore(args.concurrency)
    sim_cpu = time.process_time()
    print(f"N = {n}: poll {poll:g}s, commit splay {splay:g}s, {args.db}, {load()}")

    idle0, idle_at = cpu_s(pid), time.monotonic()
    await asyncio.sleep(5)
    idle = (cpu_s(pid) - idle0) / (time.monotonic() - idle_at)  # the collector's CPU share while idle
    print(f"  collector idle: {idle * 100:.1f}% of a core (subtracted below where it says net)")

    # 1. plain polling
    errors: list[str] = []
    before, start = git.requests, time.monotonic()
    await asyncio.gather(*(plain_agent(h, start, args.plain_seconds, poll, git.port, errors) for h in secrets))
    await asyncio.sleep(0.5)  # the daemon's last log lines
    elapsed = args.plain_seconds
    plain = (git.requests - before) * 60 / elapsed
    print(f"  plain polling:  Git requests/min {plain:9.0f}  (expected {n * 60 / poll:.0f}; client errors "
          f"{len(errors)}; {elapsed:.0f}s)")

    # 2. the beacon: wait for the collector's first head, then one poll of steady state
    known = ""
    for _ in range(300):
        status, _, answer = await http(port, "GET", f"/api/v1/heads?source={source}&ref=main",
                                       {"Authorization": f"Bearer {next(iter(secrets.values()))}"})
        if status == 200:
            known = json.loads(answer)["commit"]
            break
        await asyncio.sleep(0.1)
    tally = Tally()
    start = time.monotonic()
    until = 2 * poll + splay
    cpu0, git0 = cpu_s(pid), git.requests
    agents = asyncio.gather(*(beacon_agent(h, s, start, until, poll, splay, (port, git.port), source, tally,
                                           limit, known) for h, s in secrets.items()))
    await at(start, poll)
    steady_cpu, steady_git = cpu_s(pid) - cpu0, git.requests - git0
    steady_requests = sum(tally.beacon_status.values())
    steady_latencies = list(tally.beacon_latencies)
    new = commit(repo, "two")
    body = json.dumps({"url": source, "ref": "refs/heads/main", "after": new}).encode()
    hook = await http(port, "POST", "/api/v1/hooks/generic", sign("generic", HOOK_SECRET, body), body)
    pushed_at, git1, cpu1 = time.monotonic(), git.requests, cpu_s(pid)
    await agents
    after_s, after_cpu = time.monotonic() - pushed_at, cpu_s(pid) - cpu1
    after_git = git.requests - git1
    net = max(steady_cpu - idle * poll, 0.0)
    print(f"  beacon, steady: Git requests/min {steady_git * 60 / poll:9.1f}  beacon {steady_requests / poll:.1f} "
          f"req/s, p99 {pct(steady_latencies, 0.99):.1f} ms, collector CPU net "
          f"{net * 1000 / max(steady_requests, 1):.2f} ms/req ({net / poll * 100:.1f}% of a core)")
    print(f"  beacon, commit: Git requests/min {after_git * 60 / after_s:9.1f}  over {after_s:.0f}s after the "
          f"push (hook answered {hook[0]}; {tally.saw_new} of {n} agents saw the new head)")
    reports = tally.report_latencies
    span = max(max(tally.report_times, default=0) - min(tally.report_times, default=0), 1.0)
    # the collector's CPU after the push, less its idle share, less the polls of that window at the steady
    # state's cost per poll: what is left is the reports' (each on a new connection, batches as they come)
    polls_after = sum(tally.beacon_status.values()) - steady_requests
    with_polls = max(after_cpu - idle * after_s, 0.0)
    of_reports = max(with_polls - polls_after * net / max(steady_requests, 1), 0.0)
    print(f"  ingest:         {len(reports)} reports, {len(reports) / span:.1f}/s from the first to the last, "
          f"p50 {pct(reports, 0.5):.1f} ms, p99 {pct(reports, 0.99):.1f} ms, statuses "
          f"{tally.report_status}, collector CPU net after the push "
          f"{with_polls * 1000 / max(len(reports), 1):.2f} ms/report with the {polls_after} polls of that window, "
          f"{of_reports * 1000 / max(len(reports), 1):.2f} without them")
    print(f"  beacon statuses: {dict(sorted(tally.beacon_status.items()))}")

    # 3. UI and API at this fleet size
    auth = {"Authorization": f"Bearer {reader}"}
    for target in ("/", "/?status=in_sync&sort=last_seen", "/commits", "/drift", "/compliance",
                   "/api/v1/hosts?limit=100"):
        times = []
        for _ in range(5):
            began = time.perf_counter()
            status, _, _ = await http(port, "GET", target, auth)
            times.append(time.perf_counter() - began)
        print(f"  page {target:<36} {status}  median {statistics.median(times) * 1000:7.1f} ms")
    print(f"  simulator CPU: {time.process_time() - sim_cpu:.1f} s (the load generator, same machine); {load()}")
    return tally.created


def load() -> str:
    """The machine's load average (1, 5, 15 min), as `uptime` prints it: the figures' context."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="1000,10000", help="fleet sizes, comma-separated (each <= 20000)")
    parser.add_argument("--poll", type=float, default=60.0, help="the agents' schedule.poll, seconds")
    parser.add_argument("--commit-splay", type=float, default=60.0, help="schedule.commit_splay, seconds")
    parser.add_argument("--plain-seconds", type=float, default=20.0, help="length of the plain-polling phase")
    parser.add_argument("--concurrency", type=int, default=500, help="most HTTP requests in flight at once")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[],
                        help="passed to `gitops-collector serve`, e.g. --serve-args --no-group-commit")
    args = parser.parse_args()
    sizes = [int(x) for x in args.hosts.split(",") if x.strip()]
    if not sizes or any(not 1 <= s <= 20000 for s in sizes) or not (1 <= args.poll <= 300) \
            or not (0 <= args.commit_splay <= 600) or not (1 <= args.plain_seconds <= 300):
        parser.error("keep it bounded: hosts 1..20000, poll 1..300 s, commit splay 0..600 s, plain 1..300 s")
    print("Figures from a shared machine: the simulator, the collector and git daemon share its cores.")
    with tempfile.TemporaryDirectory(prefix="gitops-fleet-sim-") as tmp:
        for n in sizes:
            (Path(tmp) / f"db{n}").mkdir()
            run_size(n, args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
