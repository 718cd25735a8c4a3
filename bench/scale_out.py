"""Ingest through haproxy with N collectors on one PostgreSQL, against a floor measured in the same run.

For each N in --collectors (default 1, 2, 3), every round: N `gitops-collector serve` processes on one
PostgreSQL database (a fresh one, on the server of GITOPS_TEST_POSTGRES_URL), haproxy in front of them on
127.0.0.1 (round robin, health checks on /healthz, as docs/examples/haproxy.cfg), and `wrk` through haproxy:
a **floor** round (GET /static/ui.css: HTTP through haproxy and the collectors, no database) and an
**ingest** round (POSTs of real agent reports, bench/ingest_wrk.lua, each host with its own token). The N
values alternate within a round, so a drift in the machine's speed hits all of them alike.

Printed per round: requests/s, p50/p99 latency, and CPU per request of the collectors (all N together),
of PostgreSQL (the server backends of this database; its WAL writer and checkpointer are not counted) and of
haproxy, from /proc; non-2xx answers, socket errors, and lost reports (answered 201, missing from the
database). Then, per N: the median ingest rate, its ratio to the median floor of the same N, to the ingest
of the first N, and the CPU per report. Also the machine's load average before and after.

    . .ci/test-env; .venv/bin/python bench/scale_out.py                 # N = 1, 2, 3; 2 rounds of 10 s
    . .ci/test-env; .venv/bin/python bench/scale_out.py --collectors 1,2 --rounds 1 --seconds 5
    . .ci/test-env; .venv/bin/python bench/scale_out.py --serve-args --db-threads 4

Needs `wrk` and `haproxy` (Debian packages) and a PostgreSQL server (`. .ci/test-env` starts the test
cluster). Bounded: --seconds per round; traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import Engine, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.collector import db, tokens
from agent.collector.tables import runs
from bench.ingest_wrk import cpu_s, write_hosts, wrk
from tests.factory import BASE_TIME
from tests.live_collector import PG_ENV, CollectorProcess, free_port, fresh_database

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


class Haproxy:
    """haproxy in the foreground on 127.0.0.1, round robin over `backends` (ports), health-checked on
    /healthz like docs/examples/haproxy.cfg; for a `with` block."""

    def __init__(self, tmp: Path, backends: list[int], maxconn: int) -> None:
        self.port = free_port()
        servers = "\n".join(f"  server c{i} 127.0.0.1:{port} check inter 1s fall 2 rise 1"
                            for i, port in enumerate(backends))
        self.config = tmp / f"haproxy-{len(backends)}.cfg"
        self.config.write_text(f"""global
  maxconn {maxconn}
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  retries 2
  option redispatch
frontend collectors
  bind 127.0.0.1:{self.port}
  default_backend collectors
backend collectors
  balance roundrobin
  option httpchk GET /healthz
  http-check expect status 200
{servers}
""")
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Haproxy:
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"haproxy exited {self.proc.returncode}: {err.strip()[-500:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    time.sleep(1.5)  # every backend's first health check has passed
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("haproxy did not serve /healthz within 20 s")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def backend_pids(engine: Engine) -> list[int]:
    """The PostgreSQL server processes serving this database (the collectors' pooled connections)."""
    with engine.connect() as conn:
        return [int(p) for p in conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )).scalars()]


def cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds per pid, leaving out processes that are gone (or not ours to read)."""
    found = {}
    for pid in pids:
        try:
            found[pid] = cpu_s(pid)
        except (OSError, IndexError, ValueError):
            continue
    return found


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two `cpu_of` readings (a process new since `before` counts whole)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def exceptions(log: str) -> list[str]:
    """The last line of every traceback in a collector's log (the exception), cut to 200 characters."""
    found = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
                j += 1
            found.append(lines[j][:200] if j < len(lines) else "(cut off)")
    return found


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


@dataclass
class Tally:
    """What the rounds measured: per N, the request rates of each mode and the CPU per report."""

    sizes: list[int]
    acked: int = 0  # reports answered 201, warm-ups included
    exceptions: collections.Counter[str] = field(default_factory=collections.Counter)  # from the logs
    rates: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    cpu_per_report: dict[int, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rates = {n: {"floor": [], "ingest": []} for n in self.sizes}
        self.cpu_per_report = {n: [] for n in self.sizes}

    def summary(self) -> None:
        first = statistics.median(self.rates[self.sizes[0]]["ingest"])
        for n in self.sizes:
            floor, ingest = statistics.median(self.rates[n]["floor"]), statistics.median(self.rates[n]["ingest"])
            print(f"N={n}: median ingest {ingest:.1f} reports/s, floor {floor:.1f} requests/s: ratio to the floor "
                  f"{ingest / floor:.3f}; ingest {ingest / first:.2f}x N={self.sizes[0]}; CPU per report "
                  f"(collectors + PostgreSQL) {statistics.median(self.cpu_per_report[n]):.2f} ms")
        for line, count in self.exceptions.most_common():
            print(f"collector logs: {count} traceback(s) ending {line!r}")


def one_round(round_no: int, n: int, args: argparse.Namespace, url: str, engine: Engine, data: Path,
              tally: Tally, tmp: Path) -> None:
    """N fresh collectors behind a fresh haproxy: a warm-up, a floor round and an ingest round."""
    collectors = [CollectorProcess(url, None, *args.serve_args) for _ in range(n)]
    with ExitStack() as stack:
        for c in collectors:
            stack.callback(c.stop)
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda c: c.start(), collectors))
        proxy = stack.enter_context(Haproxy(tmp, [c.port for c in collectors], max(512, 4 * args.connections)))
        pids = [c.proc.pid for c in collectors if c.proc is not None]
        proxy_pids = [proxy.proc.pid] if proxy.proc is not None else []
        for mode in ("floor", "ingest"):  # warm-up: imports, connections, the database pools
            tally.acked += int(wrk(proxy.url, mode, args, data, 2)["s201"])
        for mode in ("floor", "ingest"):
            before = (cpu_of(pids), cpu_of(backend_pids(engine)), cpu_of(proxy_pids))
            r = wrk(proxy.url, mode, args, data, args.seconds)
            after = (cpu_of(pids), cpu_of(backend_pids(engine)), cpu_of(proxy_pids))
            coll, pg, hapx = (spent(b, a) * 1000 / max(r["requests"], 1) for b, a in zip(before, after, strict=True))
            ok = r["s201"] if mode == "ingest" else r["s200"]
            lost: int | str = "-"
            if mode == "ingest":
                tally.acked += int(r["s201"])
                with engine.connect() as conn:
                    stored = conn.execute(select(func.count()).select_from(runs)).scalar_one()
                lost = max(tally.acked - stored, 0)
                tally.cpu_per_report[n].append(coll + pg)
            tally.rates[n][mode].append(r["rate"])
            errors = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
            print(f"{round_no + 1:>5} {n:>2} {mode:<7} {r['requests']:>9.0f} {r['rate']:>8.1f} "
                  f"{r['p50_us'] / 1000:>8.1f} {r['p99_us'] / 1000:>8.1f} {coll:>16.2f} {pg:>5.2f} "
                  f"{hapx:>5.2f} {r['requests'] - ok:>8.0f} {errors:>7.0f} {lost:>5}", flush=True)
    for c in collectors:
        tally.exceptions.update(exceptions(c.log))


def parse_args() -> tuple[argparse.Namespace, list[int]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collectors", default="1,2,3", help="numbers of collectors, comma-separated (each 1..8)")
    parser.add_argument("--hosts", type=int, default=1000,
                        help="hosts (tokens) the reports come from; with few hosts every batch of every "
                             "collector updates the same host rows, and the collectors wait on each other's "
                             "row locks, which a fleet reporting every 30 min does not do")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (concurrent agents)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each measures every N: floor, then ingest")
    parser.add_argument("--drift-items", type=int, default=5, help="most drift items in a drifted report")
    parser.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[],
                        help="passed to every `gitops-collector serve`, e.g. --serve-args --db-threads 4")
    args = parser.parse_args()
    try:
        sizes = [int(x) for x in args.collectors.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--collectors: not a comma-separated list of numbers: {args.collectors!r}")
    if not sizes or any(not 1 <= n <= 8 for n in sizes) or not (
            1 <= args.hosts <= 20000 and 1 <= args.connections <= 2000 and 1 <= args.threads <= 16
            and 0 < args.seconds <= 120 and 1 <= args.rounds <= 10):
        parser.error("keep it bounded: collectors 1..8 each, hosts 1..20000, connections 1..2000, "
                     "threads 1..16, seconds <= 120, rounds 1..10")
    for tool, package in (("wrk", "wrk"), (HAPROXY, "haproxy")):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (Debian package `{package}`)")
    if not os.environ.get(PG_ENV):
        parser.error(f"{PG_ENV} is not set: run `. .ci/test-env` first (it starts the test PostgreSQL)")
    return args, sizes


def main() -> int:
    args, sizes = parse_args()
    print(f"postgresql: collectors {', '.join(map(str, sizes))} behind haproxy, {args.hosts} hosts, wrk "
          f"{args.threads} threads x {args.connections} connections, {args.seconds:g} s rounds; {os.cpu_count()} "
          f"CPUs, {load()}")
    print(f"{'round':>5} {'N':>2} {'':<7} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'CPU ms/req: coll':>16} {'pg':>5} {'hapx':>5} {'non-2xx':>8} {'errors':>7} {'lost':>5}")
    with tempfile.TemporaryDirectory(prefix="gitops-scale-out-") as tmp, \
            fresh_database("postgresql", Path(tmp)) as url:
        engine = db.create(url)
        db.prepare(engine)
        hosts = [f"host{i:05d}.bench" for i in range(args.hosts)]
        secrets = {info.name: secret for info, secret in tokens.create_many(engine, hosts, now=BASE_TIME)}
        data = Path(tmp) / "hosts.tsv"
        write_hosts(data, secrets, args.drift_items)
        tally = Tally(sizes)
        try:
            for round_no in range(args.rounds):
                for n in sizes:
                    one_round(round_no, n, args, url, engine, data, tally, Path(tmp))
        finally:
            engine.dispose()
        print(f"\n{load()}")
        tally.summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
