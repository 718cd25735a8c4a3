"""Evidence export memory: peak RSS of an export of 100,000 and of 1,000,000 runs, side by side.

For each size: a fresh SQLite database is seeded in a child process (runs bulk-inserted as rows over 1,000
hosts and 20 commits, 10,000 drift items, 1,000 audit rows), then the export is made twice, each time in a
fresh process whose peak RSS is read:
- `cli`: `gitops-collector drift export --format jsonl --out FILE` (signed with a throwaway key); its
  peak RSS is the child's `ru_maxrss` (os.wait4);
- `http`: `gitops-collector serve` on 127.0.0.1, `curl` downloads `/api/v1/evidence?format=jsonl`; the
  server's peak RSS is `VmHWM` of /proc/PID/status after the download (its RSS before the download is
  printed too).
Flat memory means the 1,000,000 column is about the 100,000 column.

    .venv/bin/python bench/evidence_export.py                    # 100k and 1M runs (a few minutes)
    .venv/bin/python bench/evidence_export.py --sizes 10000      # quick check
    .venv/bin/python bench/evidence_export.py --paths http --db-dir /var/tmp/ev   # keep/reuse the databases
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VENV = Path(sys.executable).parent
COLLECTOR = [sys.executable, "-m", "agent.collector.cli"]


def seed(url: str, runs: int) -> None:
    """Bulk rows straight into the tables (ingest's cost is not what is measured here)."""
    from sqlalchemy import insert

    from agent.collector import db, tokens
    from agent.collector.tables import commits, host_commits, hosts, review_audit, review_items
    from agent.collector.tables import runs as runs_t
    from agent.collector.tokens import TokenKind
    from tests.factory import BASE_TIME

    engine = db.create(url)
    db.prepare(engine)
    blob = zlib.compress(b"{}")
    shas = [f"{n:040x}" for n in range(20)]
    with db.write(engine) as conn:
        conn.execute(insert(commits), [{"sha": s, "author": "Ops <ops@example.com>", "committed_at": BASE_TIME,
                                        "subject": f"change {n}", "signature_status": "verified",
                                        "signer": "ops@example.com", "first_seen_at": BASE_TIME}
                                       for n, s in enumerate(shas)])
        conn.execute(insert(hosts), [{"host": f"h{h:04d}.example.com", "last_run_id": f"run-{h}", "status": "in_sync",
                                      "mode": "enforce", "phase_reached": "done", "commit": shas[0], "ref": "main",
                                      "drift_count": 0, "failed_count": 0, "error_count": 0, "paused": False,
                                      "agent_version": "0.1.0", "last_finished_at": BASE_TIME,
                                      "last_seen_at": BASE_TIME, "due_at": BASE_TIME, "first_seen_at": BASE_TIME}
                                     for h in range(1000)])
    step = 20_000
    pairs: set[tuple[str, str]] = set()  # host_commits, as ingest keeps it
    for start in range(0, runs, step):
        rows = []
        for n in range(start, min(runs, start + step)):
            finished = BASE_TIME - timedelta(seconds=n * 2)
            rows.append({"run_id": f"{n:032x}", "host": f"h{n % 1000:04d}.example.com", "status": "in_sync",
                         "mode": "enforce", "trigger": "schedule", "phase_reached": "done",
                         "commit": shas[n % 20], "ref": "main", "previous_commit": None, "agent_version": "0.1.0",
                         "started_at": finished - timedelta(seconds=40), "finished_at": finished,
                         "received_at": finished, "drift_count": 0, "changed": 0, "failed_count": 0,
                         "error_count": 0, "compacted": 0, "duration_s": 40.0, "report": blob})
        pairs.update((r["commit"], r["host"]) for r in rows)
        with db.write(engine) as conn:
            conn.execute(insert(runs_t), rows)
    with db.write(engine) as conn:
        conn.execute(insert(host_commits), [{"commit": c, "host": h} for c, h in sorted(pairs)])
        conn.execute(insert(review_items), [{
            "key_sha256": f"{n:064x}", "host": f"h{n % 1000:04d}.example.com", "role": "web", "play": "web",
            "ansible_role": "nginx", "task_file": "roles/nginx/tasks/main.yml", "task": f"task {n % 50}",
            "item": "", "nth": 0, "state": "resolved", "kind": "corrective",
            "kinds": '[["corrective", "2026-11-01T00:00:00+00:00"]]', "first_seen_at": BASE_TIME - timedelta(days=3),
            "last_seen_at": BASE_TIME - timedelta(days=2), "checks": 3, "commits": f'["{shas[0]}"]',
            "commit_count": 1, "module": "template", "task_path": "roles/nginx/tasks/main.yml:3",
            "resolved_at": BASE_TIME - timedelta(days=1), "resolution": "corrected"} for n in range(10_000)])
        conn.execute(insert(review_audit), [{"at": BASE_TIME - timedelta(hours=n), "actor": "rita",
                                             "actor_kind": "token", "action": "acknowledge",
                                             "target": f"item:{n + 1}", "reason": "on it", "details": "{}"}
                                            for n in range(1000)])
    tokens_file = Path(url.removeprefix("sqlite:///")).with_suffix(".token")
    tokens_file.write_text(tokens.create(engine, TokenKind.READER, "auditor", now=BASE_TIME)[1])
    engine.dispose()


def span(runs: int) -> tuple[str, str]:
    from tests.factory import BASE_TIME

    start = BASE_TIME - timedelta(seconds=runs * 2 + 60)
    return start.strftime("%Y-%m-%dT%H:%M:%SZ"), (BASE_TIME + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def cli_export(url: str, runs: int, key: Path, out: Path) -> tuple[int, float]:
    start, end = span(runs)
    began = time.monotonic()
    child = subprocess.Popen([*COLLECTOR, "drift", "export", "--db", url, "--from", start, "--to", end,
                              "--key", str(key), "--out", str(out)], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, f"export failed ({child.returncode})"
    return usage.ru_maxrss, time.monotonic() - began


def rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def http_export(url: str, runs: int, key: Path, out: Path) -> tuple[int, int, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*COLLECTOR, "serve", "--db", url, "--listen", f"127.0.0.1:{port}",
                               "--evidence-key", str(key), "--log-level", "warning"])
    try:
        token = Path(url.removeprefix("sqlite:///")).with_suffix(".token").read_text()
        for _ in range(200):
            if subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/healthz"]).returncode == 0:
                break
            time.sleep(0.1)
        before = rss(server.pid, "VmRSS")
        start, end = span(runs)
        began = time.monotonic()
        subprocess.run(["curl", "-sS", "--fail", "-o", str(out), "-H", f"Authorization: Bearer {token}",
                        f"http://127.0.0.1:{port}/api/v1/evidence?from={start}&to={end}&format=jsonl"], check=True)
        took = time.monotonic() - began
        return before, rss(server.pid, "VmHWM"), took
    finally:
        server.terminate()
        server.wait(timeout=30)


LABELS = {"cli": ("cli: peak RSS (MiB)", "cli: time (s)", "cli: bundle (MB, zip)"),
          "http": ("http: server RSS before (MiB)", "http: server peak RSS (MiB)", "http: time (s)",
                   "http: bundle (MB, zip)")}


def measure(work: Path, size: int, key: Path, paths: list[str]) -> dict[str, str]:
    url = f"sqlite:///{work / f'c{size}.db'}"
    if not (work / f"c{size}.db").exists():
        began = time.monotonic()
        subprocess.run([sys.executable, __file__, "--seed", url, str(size)], check=True)
        print(f"seeded {size} runs in {time.monotonic() - began:.0f}s", flush=True)
    found: dict[str, str] = {}
    if "cli" in paths:
        out = work / f"cli{size}.zip"
        peak, took = cli_export(url, size, key, out)
        found.update(zip(LABELS["cli"], (f"{peak / 1024:.1f}", f"{took:.0f}", f"{out.stat().st_size / 1e6:.1f}"), strict=True))
        out.unlink()
    if "http" in paths:
        out = work / f"http{size}.zip"
        before, peak, took = http_export(url, size, key, out)
        found.update(zip(LABELS["http"], (f"{before / 1024:.1f}", f"{peak / 1024:.1f}", f"{took:.0f}",
                                          f"{out.stat().st_size / 1e6:.1f}"), strict=True))
        out.unlink()
    print(f"{size:,} runs: " + ", ".join(f"{k} {v}" for k, v in found.items()), flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--paths", nargs="+", choices=["cli", "http"], default=["cli", "http"])
    parser.add_argument("--db-dir", type=Path, help="keep the seeded databases here and reuse them")
    parser.add_argument("--seed", help=argparse.SUPPRESS)  # child mode: URL RUNS
    args, rest = parser.parse_known_args()
    if args.seed:
        seed(args.seed, int(rest[0]))
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="evidence-bench-") as tmp:
        work = args.db_dir or Path(tmp)
        key = Path(tmp) / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        for size in args.sizes:
            results[size] = measure(work, size, key, args.paths)
    sizes = list(results)
    print(f"{'runs':<34}" + "".join(f"{s:>14,}" for s in sizes))
    for label in [label for p in args.paths for label in LABELS[p]]:
        print(f"{label:<34}" + "".join(f"{results[s][label]:>14}" for s in sizes))


if __name__ == "__main__":
    main()
