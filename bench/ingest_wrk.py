"""Ingest against the floor: `wrk` posts real agent reports, and fetches a static file, from one collector.

One collector (`gitops-collector serve` on 127.0.0.1) on a database of its own, one run: rounds alternate a floor round (`wrk` GETs
/static/ui.css from the same server, the cheapest thing it serves) and an ingest round (`wrk` POSTs agent
reports of --hosts hosts, each with its own ingest token, through bench/ingest_wrk.lua, every request a new
run_id). Prints, per round, requests/s, p50/p99 latency and, for ingest, the collector's CPU per report and
the lost count (reports answered 201 but missing from the database); then the ratio of the median ingest
rate to the median floor rate.

    .venv/bin/python bench/ingest_wrk.py                         # SQLite, 50 hosts, 1 thread x 50 connections
    .venv/bin/python bench/ingest_wrk.py --hosts 1000 --connections 1000 --threads 2
    .venv/bin/python bench/ingest_wrk.py --hosts 1000 --connections 1000 --threads 2 --pause-ms 1000  # paced
    .venv/bin/python bench/ingest_wrk.py --profile 15            # also: py-spy on an extra ingest round
    .venv/bin/python bench/ingest_wrk.py --timeline ...          # and each ingest round second by second
    .venv/bin/python bench/ingest_wrk.py --also=--no-group-commit   # and a second collector, side by side
    .venv/bin/python bench/ingest_wrk.py --baseline /tmp/old     # and main's collector: old against new
    GITOPS_TEST_POSTGRES_URL=$(bash .ci/postgres-up) .venv/bin/python bench/ingest_wrk.py --db postgresql

Needs `wrk` (Debian package `wrk`); `--profile` needs `py-spy` (`.venv/bin/pip install py-spy`) and the
right to ptrace the collector. Bounded: --seconds per round, traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.collector import db, tokens
from agent.collector.tables import runs
from agent.collector.tables import tokens as tokens_table
from agent.collector.tokens import TokenKind
from bench.ingest import realistic_body
from tests.factory import BASE_TIME
from tests.live_collector import CollectorProcess, fresh_database

LUA = Path(__file__).resolve().parent / "ingest_wrk.lua"
FLOOR_PATH = "/static/ui.css"
MARK = "@@RUN_ID@@"


class Collector:
    """`gitops-collector serve` for a `with` block, its stderr appended to `log` (drained by a thread: a
    full pipe would block the collector's logging, and so its requests)."""

    def __init__(self, url: str, serve_args: list[str], log: Path, code: Path | None = None) -> None:
        self.server = CollectorProcess(url, None, *serve_args)
        self.log = log
        self.url = self.server.url
        self.pid = 0
        self.code = code

    def __enter__(self) -> Collector:
        if self.code is None:
            self.server.start()
        else:  # another checkout's `agent` package first on the path (`python -m` puts the working directory
            # first, so the collector starts in that checkout): an older collector, same interpreter
            saved, here = os.environ.get("PYTHONPATH"), Path.cwd()
            os.environ["PYTHONPATH"] = str(self.code)
            os.chdir(self.code)
            try:
                self.server.start()
            finally:
                os.chdir(here)
                if saved is None:
                    del os.environ["PYTHONPATH"]
                else:
                    os.environ["PYTHONPATH"] = saved
        assert self.server.proc is not None
        self.pid = self.server.proc.pid
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        with self.log.open("a", encoding="utf-8") as out:  # the collector's stderr, kept by live_collector
            out.write(self.server.log)


def write_hosts(path: Path, secrets: dict[str, str], drift_items: int) -> None:
    """One line per host for the Lua script: token, the report JSON split around its run_id."""
    lines = []
    for host, secret in secrets.items():
        _, body = realistic_body(host, random.Random(host), drift_items)
        doc = json.loads(body)
        doc["run_id"] = MARK
        before, after = json.dumps(doc, separators=(",", ":")).split(MARK)
        lines.append(f"{secret}\t{before}\t{after}\n")
    path.write_text("".join(lines))


def _stat(pid: int | str) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_s(pid: int) -> float:
    """User+sys CPU seconds of `pid`, its waited-for children and its live descendants (`serve
    --writer-process`'s child, `--workers N`'s), from /proc/PID/stat."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(entry.name)[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree, grew = tree | more, bool(more)
    ticks = sum(int(x) for x in _stat(pid)[11:15])  # utime stime cutime cstime; raises when pid is gone
    for member in tree - {pid}:
        try:
            ticks += sum(int(x) for x in _stat(member)[11:15])  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(url: str, mode: str, args: argparse.Namespace, data: Path, seconds: float) -> dict[str, float]:
    env = {**os.environ, "BENCH_MODE": mode, "BENCH_DATA": str(data), "BENCH_PATH": FLOOR_PATH,
           "BENCH_NONCE": uuid.uuid4().hex[:8], "BENCH_PAUSE_MS": f"{args.pause_ms:d}", "BENCH_THREADS": str(args.threads)}
    cmd = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{seconds:g}s",
           "--timeout", "30s", "-s", str(LUA), url]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=seconds + 120).stdout
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no RESULT line:\n{out}")
    r = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    r["rate"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def measure(url: str, mode: str, args: argparse.Namespace, data: Path,
            reader: str) -> tuple[dict[str, float], list[str]]:
    """One round of `wrk`: its result, and with --timeline for ingest a line per second of it."""
    run = functools.partial(wrk, url, mode, args, data, args.seconds)
    return timeline(url, reader, run) if mode == "ingest" and args.timeline else (run(), [])


def latency_buckets(url: str, reader: str) -> dict[str, float]:
    """The collector's ingest latency histogram: {upper bound ("0.1", ..., "+Inf"): cumulative count}."""
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {reader}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read().decode()
    prefix = 'gitops_ingest_duration_seconds_bucket{le="'
    return {line[len(prefix):].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


def timeline(url: str, reader: str, run: Callable[[], dict[str, float]]) -> tuple[dict[str, float], list[str]]:
    """`run()` (a wrk round) while the histogram is read once a second: (its result, a line per second)."""
    result: dict[str, float] = {}
    thread = threading.Thread(target=lambda: result.update(run()))
    lines, before = [], latency_buckets(url, reader)
    thread.start()
    while thread.is_alive():
        thread.join(1.0)
        now = latency_buckets(url, reader)
        delta = {bound: now[bound] - before.get(bound, 0.0) for bound in now}
        total = delta.get("+Inf", 0.0)
        lines.append(f"{time.strftime('%H:%M:%S', time.gmtime())} UTC, {total:5.0f} answered, " + ", ".join(
            f"{total - delta[bound]:4.0f} over {label}" for bound, label in
            (("0.1", "100 ms"), ("0.25", "250 ms"), ("1.0", "1 s"))))
        before = now
    if not result:
        raise RuntimeError("wrk failed during --timeline (see above)")
    return result, lines


def summarize_profile(raw: Path, top: int) -> None:
    """Top functions of py-spy's collapsed stacks: self (innermost frame) and inclusive share of samples."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"\npy-spy --gil: {total} samples of the thread holding the GIL (Python CPU)")
    ours: collections.Counter[str] = collections.Counter(
        {name: n for name, n in incl.items() if "(agent/" in name or "do_commit" in name})
    for title, counter in (("self", own), ("inclusive, the project's functions and commits", ours)):
        print(f"top {top} by {title} share:")
        for name, n in counter.most_common(top):
            print(f"  {100 * n / total:5.1f}%  {name}")


def short(frame: str) -> str:
    """'func (/long/path/site-packages/pkg/mod.py:12)' -> 'func (pkg/mod.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", "/wt-20/", "/work/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def prepare(url: str, code: Path | None) -> None:
    """Migrate the database at `url` with this tree's collector, or with the one in `code`."""
    if code is None:
        engine = db.create(url)
        try:
            db.prepare(engine)
        finally:
            engine.dispose()
        return
    subprocess.run([sys.executable, "-c", "import sys; from agent.collector import db; "
                    "e = db.create(sys.argv[1]); db.prepare(e); e.dispose()", url],
                   cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, check=True)


def databases(args: argparse.Namespace, variants: dict[str, tuple[list[str], Path | None]], tmp: Path,
              stack: contextlib.ExitStack) -> tuple[dict[str, str], dict[str, Engine]]:
    """A database of its own for each variant, migrated by that variant's code (a baseline may be a
    schema behind), removed when `stack` closes: (URLs, engines) by variant."""
    urls, engines = {}, {}
    for n, (name, (_, code)) in enumerate(variants.items()):
        (tmp / str(n)).mkdir()
        urls[name] = stack.enter_context(fresh_database(args.db, tmp / str(n)))
        prepare(urls[name], code)
        engines[name] = db.create(urls[name])
        stack.callback(engines[name].dispose)
    return urls, engines


def make_tokens(count: int, engines: list[Engine]) -> tuple[dict[str, str], str]:
    """An ingest token for each of `count` hosts and a reader token (for --timeline), the same in every
    database: (secret by host, the reader's secret)."""
    first = engines[0]
    hosts = [f"host{i:05d}.bench" for i in range(count)]
    secrets = {h: tokens.create(first, TokenKind.INGEST, h, now=BASE_TIME)[1] for h in hosts}
    reader = tokens.create(first, TokenKind.READER, "bench-reader", now=BASE_TIME)[1]
    with first.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(tokens_table)).mappings()]
    for engine in engines[1:]:
        with engine.begin() as conn:
            conn.execute(tokens_table.insert(), rows)
    return secrets, reader


def variants_of(args: argparse.Namespace) -> dict[str, tuple[list[str], Path | None]]:
    """The collectors to measure: name -> (serve options, the checkout of another `agent`, or None)."""
    variants: dict[str, tuple[list[str], Path | None]] = {"as given": (list(args.serve_args), None)}
    if args.also is not None:
        variants[f"+ {args.also}"] = ([*args.serve_args, *shlex.split(args.also)], None)
    if args.baseline is not None:
        variants["baseline"] = (list(args.serve_args), args.baseline.resolve())
    return variants


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=50, help="hosts (tokens) the reports come from")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (concurrent agents)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per round")
    parser.add_argument("--rounds", type=int, default=2, help="floor/ingest pairs, alternating")
    parser.add_argument("--pause-ms", type=int, default=0, metavar="MS",
                        help="each connection waits before each request (both rounds), a time drawn uniformly "
                             "from 0 to 2*MS (mean MS, so that connections do not stay in step): with "
                             "--connections 1000 --pause-ms 1000, 1,000 agents sending about one report a "
                             "second each (default 0: every connection always busy)")
    parser.add_argument("--drift-items", type=int, default=5, help="most drift items in a drifted report")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--also", metavar="ARGS", default=None,
                        help="also measure a collector with these extra serve options, alternating in the same "
                             "run, e.g. --also=--no-group-commit")
    parser.add_argument("--baseline", type=Path, metavar="DIR", default=None,
                        help="also measure the collector of another checkout (a directory holding its `agent` "
                             "package, e.g. `git archive main agent | tar -x -C DIR`), alternating in the "
                             "same run: old against new")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="after the rounds, an extra ingest round of SECONDS under py-spy (not counted)")
    parser.add_argument("--top", type=int, default=15, help="profile entries to print")
    parser.add_argument("--profile-out", type=Path, metavar="FILE", default=None,
                        help="also keep the profile's raw collapsed stacks in FILE (for flame graphs, or to "
                             "sum up the frames of your choice)")
    parser.add_argument("--timeline", action="store_true",
                        help="also print each ingest round second by second: reports answered, and how many "
                             "took over 100 ms, 250 ms and 1 s (each line with its UTC time, to set beside vmstat or a log), from the collector's own latency histogram "
                             "(GET /metrics once a second; it times a request from its handler's start, so a "
                             "wait in front of the event loop is not in it): where in a round the tail is")
    parser.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[],
                        help="passed to `gitops-collector serve`, e.g. --serve-args --db-threads 4")
    args = parser.parse_args()
    if not (1 <= args.hosts <= 20000 and 1 <= args.connections <= 2000 and 1 <= args.threads <= 16
            and 0 < args.seconds <= 120 and 1 <= args.rounds <= 10 and args.profile <= 120
            and 0 <= args.pause_ms <= 60_000):
        parser.error("keep it bounded: hosts 1..20000, connections 1..2000, threads 1..16, seconds <= 120, "
                     "rounds 1..10, profile <= 120, pause-ms 0..60000")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian package `wrk`)")
    if args.profile and shutil.which("py-spy") is None and not Path(sys.executable).with_name("py-spy").exists():
        parser.error("--profile needs py-spy (.venv/bin/pip install py-spy)")
    print(f"{args.db}: {args.hosts} hosts, wrk {args.threads} threads x {args.connections} connections, "
          f"{args.seconds:g} s rounds, up to {args.drift_items} drift items per report"
          + (f", each connection pausing 0-{2 * args.pause_ms} ms (mean {args.pause_ms}) before each request"
             if args.pause_ms else ""))
    print(f"{'round':>5} {'collector':<24} {'':<8} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11} "
          f"{'non-2xx':>8} {'errors':>7} {'lost':>5}")
    with tempfile.TemporaryDirectory(prefix="gitops-bench-") as tmp, contextlib.ExitStack() as stack:
        variants = variants_of(args)
        urls, engines = databases(args, variants, Path(tmp), stack)
        secrets, reader = make_tokens(args.hosts, list(engines.values()))
        data = Path(tmp) / "hosts.tsv"
        write_hosts(data, secrets, args.drift_items)
        rates: dict[str, dict[str, list[float]]] = {v: {"floor": [], "ingest": []} for v in variants}
        acked = dict.fromkeys(variants, 0)
        for round_no in range(args.rounds):
            for name, (serve_args, code) in variants.items():
                # each variant gets its own collector, started fresh each round, on its own database
                url, engine = urls[name], engines[name]
                with Collector(url, serve_args, Path(tmp) / "collector.log", code) as server:
                    wrk(server.url, "floor", args, data, 2)  # warm-up: imports, first connections
                    for mode in ("floor", "ingest"):
                        before = cpu_s(server.pid)
                        r, seconds = measure(server.url, mode, args, data, reader)
                        cpu_ms = (cpu_s(server.pid) - before) * 1000 / max(r["requests"], 1)
                        ok = r["s201"] if mode == "ingest" else r["s200"]
                        acked[name] += int(r["s201"]) if mode == "ingest" else 0
                        rates[name][mode].append(r["rate"])
                        with engine.connect() as conn:
                            stored = conn.execute(select(func.count()).select_from(runs)).scalar_one()
                        lost = max(acked[name] - stored, 0) if mode == "ingest" else 0
                        errors = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
                        print(f"{round_no + 1:>5} {name:<24} {mode:<8} {r['requests']:>9.0f} {r['rate']:>9.1f} "
                              f"{r['p50_us'] / 1000:>8.1f} {r['p99_us'] / 1000:>8.1f} {cpu_ms:>11.2f} "
                              f"{r['requests'] - ok:>8.0f} {errors:>7.0f} {lost if mode == 'ingest' else '-':>5}",
                              *(f"\n{'':>40} second {n:>3}: {line}" for n, line in enumerate(seconds, 1)),
                              sep="", flush=True)
        print()
        for name, by_mode in rates.items():
            floor, ingest = statistics.median(by_mode["floor"]), statistics.median(by_mode["ingest"])
            print(f"{name}: median ingest {ingest:.1f} reports/s, median floor {floor:.1f} requests/s: "
                  f"ratio {ingest / floor:.3f} (goal: >= 0.5 and >= 1000 reports/s)")
        if args.profile:
            with Collector(urls["as given"], list(args.serve_args), Path(tmp) / "collector.log") as server:
                raw = Path(tmp) / "profile.txt"
                spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
                prof = subprocess.Popen([spy, "record", "--pid", str(server.pid), "--duration",
                                         f"{args.profile:g}", "--rate", "200", "--gil", "--format", "raw",
                                         "--output", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(1)
                wrk(server.url, "ingest", args, data, args.profile)
                _, err = prof.communicate(timeout=args.profile + 60)
                if prof.returncode != 0 or not raw.exists():
                    raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")
                summarize_profile(raw, args.top)
                if args.profile_out is not None:
                    shutil.copyfile(raw, args.profile_out)
        logged = (Path(tmp) / "collector.log").read_text(errors="replace")
        tracebacks = logged.count("Exception in ASGI application")
        disconnects = logged.count("starlette.requests.ClientDisconnect")
        if logged:
            print(f"\ncollector log: {len(logged.splitlines())} lines, {tracebacks} tracebacks "
                  f"({disconnects} of them ClientDisconnect: requests in flight when wrk stops)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
