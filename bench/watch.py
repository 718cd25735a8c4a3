"""Watching managed paths (issue 21, docs/watch.md): time to detect, idle cost, cost of a burst.

    .venv/bin/python bench/watch.py [--edits 5] [--scheduled-edits 3] [--interval 60s] [--seconds 120]
                                    [--strategies mitogen,linear] [--idle-only | --no-idle]
                                    [--tree] [--no-burst] [--tree-walk 100000]

1. Time to detect: a real collector (`gitops-collector serve`, SQLite) and the daemon of the example repo
   (`make demo`'s sandbox) in detect mode. Each hand edit of a managed file (/etc/motd under the target
   root) is timed until a run with the drift is stored in the collector (polled through its API every
   0.1 s), once per `ansible.strategy` of --strategies, with the machine's load average, and the
   breakdown of each from the run's own report (edit -> check started, fetch, Ansible check, the rest,
   finished -> stored) and the CPU of the daemon's children for the check. First with `watch: true` (trigger watch), then with `watch: false` and schedule.interval set
   to --interval (trigger schedule), the same way: the scheduled case is what Puppet's runinterval and
   ansible-pull's cron give too, and it scales with the interval (measured here with a short one).
2. Idle cost: three daemons at once over --seconds, converged, nothing changing: `watch: false`, and
   `watch: true` with 1,000 and with 10,000 watched paths (files in directories of 100, written into
   each daemon's state_dir/watch.json, the hand-off a check of such a role writes). RSS (max of 1 s
   samples) and CPU (user+sys of the daemon and its reaped children, /proc/PID/stat) per hour. With
   --tree, a fourth daemon watches one managed tree of 10,000 files (a `copy` of a directory: 10 x 10
   directories of 100 files, one tree in watch.json, every directory watched below its top).
   --tree-walk N only times arming the watcher (agent.watcher, in this process) for one tree of N files
   and re-arming the same set, against the walk's bound (watcher.TREE_MAX_ENTRIES), and exits.
3. A burst: 500 of the 10,000 watched files rewritten at once: the watch checks that follow (one per
   role expected), from the daemon's log.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from common import BIN, ROOT, median, sandbox

from agent.config_values import parse_duration
from agent.report import parse_time

HOST = "web01.example.com"
# "old": the watch check as before the warm start (issue 21's first figures): a new process per check,
# 2 s debounce. "new": the warm start with the 1 s debounce. "default": the defaults (1 s debounce, no
# warm start: its helper's memory is over the idle goal, docs/watch.md section 11).
VARIANTS = {"old": "watch_warm_start: false\nwatch_debounce: 2s\n", "new": "watch_warm_start: true\n",
            "default": ""}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def collector_cli(db: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "agent.collector.cli", *args, "--db", db], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    return out.strip().splitlines()[-1] if out.strip() else ""


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_collector(workdir: Path) -> tuple[subprocess.Popen[bytes], str, str, str]:
    db = f"sqlite:///{workdir / 'collector.db'}"
    collector_cli(db, "migrate")
    ingest = collector_cli(db, "token", "create", HOST)
    reader = collector_cli(db, "token", "create", "--reader", "bench")
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "agent.collector.cli", "serve", "--listen", url[7:],
                             "--db", db, "--log-level", "warning"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(300):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url, ingest, reader
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the collector did not start")


def write_config(workdir: Path, name: str, state: str, extra: str) -> Path:
    config = workdir / f"{name}.yaml"
    config.write_text(f"host: {HOST}\nsource: {{url: config-repo}}\nstate_dir: {state}\n"
                      f"extra_vars: {{target_root: {workdir / 'root'}}}\n{extra}")
    return config


def daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "gitops-agent"), "daemon", "--config", str(config)],
                            stderr=log.open("wb"), cwd=config.parent)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def stored_runs(url: str, reader: str) -> list[dict[str, object]]:
    response = httpx.get(f"{url}/api/v1/hosts/{HOST}/runs", params={"limit": 100},
                         headers={"Authorization": f"Bearer {reader}"}, timeout=5)
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return list(response.json()["items"])


def helpers(pid: int) -> list[int]:
    """The daemon's warm-start helpers (`python -m agent.zygote`, its children)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid and \
                    b"agent.zygote" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def print_helpers(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """The warm start's helpers (agent.zygote): a process of its own beside each watching daemon."""
    for name, p in procs.items():
        for helper in helpers(p.pid):
            print(f"  {name:<13} + its warm-start helper pid {helper}: RSS {rss_mb(helper):5.1f} MB, "
                  f"CPU {cpu_s(helper):.2f}s since it started (its imports)")


def children_cpu_s(pid: int) -> float:
    """CPU (user+sys) of the reaped children of `pid` (the daemon's cycles), /proc/PID/stat, and of its
    warm-start helper's (the cycles forked there)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = sum(int(f) for f in fields[13:15]) / os.sysconf("SC_CLK_TCK")
    return own + sum(children_cpu_s(helper) for helper in helpers(pid))


def breakdown(state: Path, run_id: str, edited_at: float, stored_after: float) -> dict[str, float]:
    """Where the seconds from an edit to the stored run went, from the run's own report (history)."""
    report = json.loads(next((state / "history").glob(f"*{run_id}*.json")).read_text())
    d = report["durations_s"]
    started = parse_time(report["started_at"]).timestamp() - edited_at
    finished = parse_time(report["finished_at"]).timestamp() - edited_at
    return {"edit -> check started (debounce, child start)": started, "fetch": d["fetch"] or 0.0,
            "ansible check": d["check"] or 0.0,
            "plan, report (rest of the cycle)": d["total"] - (d["fetch"] or 0.0) - (d["check"] or 0.0),
            "finished -> stored (delivery)": stored_after - finished}


def time_to_detect(workdir: Path, url: str, reader: str, config: Path, edits: int, trigger: str,
                   spacing: tuple[float, float], started: list[float] | None = None,
                   parts: list[dict[str, float]] | None = None) -> list[float]:
    """Seconds from each hand edit to a stored run with drift and this trigger; `started` gets the
    seconds from each edit to the start of that run (its started_at); `parts` the breakdown of each
    (`breakdown`, plus the CPU of the daemon's children for it)."""
    motd = workdir / "root/etc/motd"
    log = workdir / f"daemon-{trigger}.log"
    proc = daemon(config, log)
    found: list[float] = []
    try:
        time.sleep(5)  # started, watching
        for n in range(edits):
            time.sleep(random.uniform(*spacing))  # a hand edit at a random moment of the schedule
            seen = {str(r["run_id"]) for r in stored_runs(url, reader)}
            cpu_before = children_cpu_s(proc.pid)
            edited, edited_at = time.monotonic(), time.time()
            motd.write_text(f"edited by hand {n} {time.time()}\n")
            while time.monotonic() - edited < 3600:
                new = [r for r in stored_runs(url, reader) if str(r["run_id"]) not in seen
                       and r["trigger"] == trigger and int(str(r.get("drift_count") or 0)) > 0]
                if new:
                    found.append(time.monotonic() - edited)
                    if started is not None:
                        started.append(parse_time(str(new[0]["started_at"])).timestamp() - edited_at)
                    if parts is not None:  # once the daemon reaped the child (its cycle line)
                        reaped = time.monotonic() + 120
                        while (log.read_text().count("cycle done: trigger=watch") < n + 1
                               and time.monotonic() < reaped):
                            time.sleep(0.1)
                        parts.append({**breakdown(workdir / "state", str(new[0]["run_id"]), edited_at,
                                                  found[-1]),
                                      "CPU of the check (child and Ansible, CPU-s)":
                                      children_cpu_s(proc.pid) - cpu_before})
                    print(f"  {trigger}: edit {n + 1}/{edits} stored after {found[-1]:.1f}s", flush=True)
                    break
                time.sleep(0.1)
            time.sleep(3)  # the daemon's cycle line, and its own changes' grace
    finally:
        stop(proc)
        cold = log.read_text().count("this check starts a new process")
        if cold:
            print(f"  ({cold} of these watch checks took the cold path: see {log})")
    return found


def watch_set(state: Path, tree: Path, count: int) -> None:
    """state/watch.json with the real roles' paths plus `count` files of role base under `tree`."""
    current = json.loads((state / "watch.json").read_text())
    files = [str(tree / f"d{n // 100:03}" / f"f{n % 100:02}") for n in range(count)]
    for name in files:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text("x\n")
    base = current["roles"].setdefault("base", {"paths": [], "blind": []})
    base["paths"] = sorted({*base["paths"], *files})
    (state / "watch.json").write_text(json.dumps(current))


def watch_tree(state: Path, tree: Path, count: int) -> None:
    """state/watch.json with the real roles' paths plus one managed tree of role base at `tree`: `count`
    files in directories of 100, themselves 10 to a directory (a copied directory of that size)."""
    current = json.loads((state / "watch.json").read_text())
    for n in range(count):
        name = tree / f"g{n // 1000:02}" / f"d{n // 100 % 10}" / f"f{n % 100:02}"
        name.parent.mkdir(parents=True, exist_ok=True)
        name.write_text("x\n")
    base = current["roles"].setdefault("base", {"paths": [], "blind": []})
    base["paths"] = sorted({*base["paths"], str(tree)})
    base["trees"] = sorted({*base.get("trees", []), str(tree)})
    (state / "watch.json").write_text(json.dumps(current))


def tree_walk(workdir: Path, count: int) -> None:
    """Time Watcher.watch() of one tree of `count` files (100 to a directory, 10 directories to one)."""
    from agent.watcher import TREE_MAX_ENTRIES, Watcher
    tree = workdir / f"walk-{count}"
    if not tree.exists():
        for n in range(count):
            name = tree / f"g{n // 1000:03}" / f"d{n // 100 % 10}" / f"f{n % 100:02}"
            name.parent.mkdir(parents=True, exist_ok=True)
            name.touch()
    with Watcher() as w:
        began = time.perf_counter()
        state = w.watch([str(tree)], [str(tree)])
        armed = time.perf_counter() - began
        began = time.perf_counter()
        w.watch([str(tree)], [str(tree)])
        again = time.perf_counter() - began
    print(f"tree of {count} files (bound {TREE_MAX_ENTRIES} entries): armed in {armed * 1000:.0f} ms, "
          f"the same set again in {again * 1000:.1f} ms; {state.directories} directory watches, "
          f"{state.trees} trees watched; unwatched {list(state.unwatched)} ({state.reason})")


def burst(workdir: Path, big: int) -> None:
    """500 of the 10,000 watched files (daemon number `big`) rewritten at once: its watch checks."""
    # The burst: 500 files of the 10,000 rewritten at once.
    log_path = workdir / f"daemon-idle-{big}.log"
    before = log_path.read_text().count("cycle done: trigger=watch")
    for n in range(500):
        (workdir / f"tree-{big}" / f"d{n // 100:03}" / f"f{n % 100:02}").write_text(f"upgraded {n}\n")
    time.sleep(5)
    deadline = time.monotonic() + 600
    while log_path.read_text().count("cycle done: trigger=watch") == before and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(10)  # any further checks the burst would start
    lines = [x for x in log_path.read_text().splitlines() if "watched paths changed:" in x]
    after = log_path.read_text().count("cycle done: trigger=watch") - before
    print(f"\nburst of 500 watched files (role base): {after} watch check(s); "
          f"{lines[-1].split('msg=')[1][:100] if lines else '-'}")


def idle_daemon(workdir: Path, n: int, extra: str, count: int) -> subprocess.Popen[bytes]:
    """Daemon number `n` of the idle run: `count` watched files (a negative count: one tree of that many)."""
    state = workdir / f"state-idle-{n}"
    shutil.copytree(workdir / "state", state, symlinks=True)
    if count > 0:
        watch_set(state, workdir / f"tree-{n}", count)
    elif count < 0:
        watch_tree(state, workdir / f"tree-{n}", -count)
    config = write_config(workdir, f"idle-{n}", str(state),
                          "schedule: {interval: 1d, poll: 1m, splay: 0s}\nmode: detect\n" + extra)
    return daemon(config, workdir / f"daemon-idle-{n}.log")  # (1d: no scheduled check in the run)


def idle_and_burst(workdir: Path, seconds: float, *, tree: bool = False, bursts: bool = True) -> None:
    variants = {"no watch": ("watch: false\n", 0), "1,000 paths": ("", 1000), "10,000 paths": ("", 10000)}
    if tree:
        variants["10,000-file tree"] = ("", -10000)
    procs = {name: idle_daemon(workdir, n, extra, count)
             for n, (name, (extra, count)) in enumerate(variants.items())}
    try:
        time.sleep(10)  # started, armed
        start = {name: cpu_s(p.pid) for name, p in procs.items()}
        began = time.monotonic()
        rss: dict[str, float] = dict.fromkeys(procs, 0.0)
        while time.monotonic() - began < seconds:
            for name, p in procs.items():
                rss[name] = max(rss[name], rss_mb(p.pid))
            time.sleep(1)
        elapsed = time.monotonic() - began
        used = {name: cpu_s(p.pid) - start[name] for name, p in procs.items()}
        print(f"\nidle daemons over {elapsed:.0f}s, side by side (poll 1m):")
        for name in procs:
            print(f"  {name:<16} RSS {rss[name]:5.1f} MB ({rss[name] - rss['no watch']:+.1f} MB)   CPU "
                  f"{used[name]:.2f}s = {used[name] / elapsed * 3600:.1f} CPU-s per hour")
        print_helpers(procs)
        for n, name in enumerate(procs):
            if "cycle done" in (workdir / f"daemon-idle-{n}.log").read_text():
                print(f"  WARNING: {name} ran a cycle during the idle run: its figures are not idle ones")
        for name in procs:
            if name != "no watch":
                log = (workdir / f"daemon-idle-{list(procs).index(name)}.log").read_text()
                print(f"  {name}: {[x.split('msg=')[1] for x in log.splitlines() if 'watch: ' in x][-1]}")
        if bursts:
            burst(workdir, list(procs).index("10,000 paths"))
    finally:
        for p in procs.values():
            stop(p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--scheduled-edits", type=int, default=3)
    parser.add_argument("--interval", default="60s")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gitops-bench-watch"))
    parser.add_argument("--idle-only", action="store_true", help="only the idle cost and the burst")
    parser.add_argument("--strategies", default="mitogen,linear",
                        help="ansible.strategy values to time the watch with (comma-separated)")
    parser.add_argument("--no-idle", action="store_true", help="skip the idle cost and the burst")
    parser.add_argument("--variants", default="new",
                        help="daemon settings to time the watch with, alternating (comma-separated): "
                             + "; ".join(f"{k}: {v.strip() or 'the defaults'}" for k, v in VARIANTS.items()))
    parser.add_argument("--rounds", type=int, default=1,
                        help="how often the variants take turns (each turn: --edits edits)")
    parser.add_argument("--tree", action="store_true",
                        help="idle cost: also a daemon watching one managed tree of 10,000 files")
    parser.add_argument("--no-burst", action="store_true", help="skip the burst (it runs a watch check)")
    parser.add_argument("--tree-walk", type=int, metavar="N", help="only time arming a tree of N files")
    args = parser.parse_args()
    if args.tree_walk:
        args.workdir.mkdir(parents=True, exist_ok=True)
        tree_walk(args.workdir, args.tree_walk)
        return
    sandbox(args.workdir, HOST)  # converged once (enforce), so a hand edit is corrective drift
    if args.idle_only:
        idle_and_burst(args.workdir, args.seconds, tree=args.tree, bursts=not args.no_burst)
        return
    collector, url, ingest, reader = start_collector(args.workdir)
    token = args.workdir / "token"
    token.write_text(ingest + "\n")
    token.chmod(0o600)
    # detect mode: the edits stay, each is drift again; the contested bound (a detect-mode report of a
    # drifted path counts as a correction, docs/watch.md 6) is set out of reach for these repeated edits.
    common = (f"collector: {{url: '{url}', token_file: {token}}}\nmode: detect\n"
              "watch_contested_flips: 1000\n")
    try:
        print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
              f"(1, 5, 15 min) on {os.cpu_count()} CPUs", flush=True)
        results: dict[str, tuple[list[float], list[dict[str, float]], tuple[float, ...]]] = {}
        for strategy in [s for s in args.strategies.split(",") if s]:
            for _ in range(args.rounds):  # the variants alternate, so that both see the same load
                for variant in [v for v in args.variants.split(",") if v]:
                    settings = VARIANTS[variant].strip().replace("\n", ", ") or "defaults"
                    key = f"ansible.strategy {strategy}, {variant} ({settings})"
                    watched, parts, _load = results.get(key, ([], [], ()))
                    watched += time_to_detect(
                        args.workdir, url, reader,
                        write_config(args.workdir, "watch", "state",
                                     common + "schedule: {interval: 1h, poll: 1m, splay: 0s}\n"
                                     f"ansible: {{strategy: {strategy}}}\n" + VARIANTS[variant]),
                        args.edits, "watch", (1.0, 3.0), None, parts)
                    results[key] = (watched, parts, os.getloadavg())
        interval = args.interval
        interval_s = parse_duration(interval)
        scheduled = time_to_detect(
            args.workdir, url, reader,
            write_config(args.workdir, "scheduled", "state", common + "watch: false\n"
                         f"schedule: {{interval: {interval}, poll: 1m, splay: 0s}}\n"),
            args.scheduled_edits, "schedule", (0.0, interval_s)) if args.scheduled_edits else []
        print("\ntime to detect (hand edit -> drift stored in the collector), detect mode:")
        for strategy, (watched, parts, load) in results.items():
            print(f"  watch: true, {strategy}: median {median(watched):6.1f}s  (n={len(watched)}, "
                  f"max {max(watched):.1f}s); load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
            for key in parts[0]:
                print(f"      {key:<48} median {median([p[key] for p in parts]):6.2f}")
        if scheduled:
            print(f"  watch: false, schedule.interval {interval}: median {median(scheduled):6.1f}s "
                  f"(n={len(scheduled)}, max {max(scheduled):.1f}s)")
    finally:
        collector.send_signal(signal.SIGTERM)
        collector.wait(30)
    if not args.no_idle:
        idle_and_burst(args.workdir, args.seconds, tree=args.tree, bursts=not args.no_burst)


if __name__ == "__main__":
    main()
