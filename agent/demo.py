"""`make demo`: the whole loop on this machine, in a sandbox folder, with no server and no root.

1. makes a Git repository from the project's playbooks/ and inventory/ (the example config repo);
2. writes an agent.yaml for host web01.example.com whose target_root is demo/root, so every managed
   path lands under demo/ (the same agent code path as production: only the root differs);
3. runs `gitops-agent run`: the first apply (intentional drift, corrected);
4. edits a managed file by hand and runs again: corrective drift, shown as a diff, corrected;
5. shows `gitops-agent status`;
6. throughout, a collector on 127.0.0.1 (SQLite in demo/) receives every report; unless DEMO_NO_SERVE is
   set, it keeps serving afterwards (with a reader token printed) until Ctrl-C.
The agent and the collector run as separate processes, exactly as an operator would run them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "web01.example.com"
MANAGED = "etc/motd"


def say(text: str) -> None:
    print(f"\n\x1b[1m== {text}\x1b[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def agent(workdir: Path, *args: str, ok: tuple[int, ...] = (0,)) -> int:
    print(f"$ gitops-agent {' '.join(args)} --config {workdir / 'agent.yaml'}", flush=True)
    result = subprocess.run([sys.executable, "-m", "agent.cli", *args, "--config",
                             str(workdir / "agent.yaml")], check=False)
    if result.returncode not in ok:
        raise SystemExit(f"demo: gitops-agent {args[0]} exited with {result.returncode}")
    return result.returncode


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=Demo Operator",
                    "-c", "user.email=ops@example.com", *args], check=True, stdout=subprocess.DEVNULL)


def make_config_repo(project: Path, repo: Path) -> None:
    repo.mkdir(parents=True)
    for name in ("playbooks", "inventory"):
        shutil.copytree(project / name, repo / name)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Example fleet configuration")


def write_config(workdir: Path, collector_url: str) -> None:
    root = workdir / "root"
    root.mkdir()
    (workdir / "agent.yaml").write_text(
        f"# Written by `make demo`. Paths are relative to this file.\n"
        f"host: {HOST}\n"
        f"source:\n  url: config-repo\n  ref: main\n"
        f"mode: enforce\n"
        f"state_dir: state\n"
        f"collector:\n  url: {collector_url}\n  token_file: token\n"
        f"extra_vars:\n  target_root: {root}\n", encoding="utf-8")


def collector_cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "agent.collector.cli", *args], check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1] if out.strip() else ""


def free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_collector(workdir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """`gitops-collector serve` on 127.0.0.1 with a SQLite file in the demo folder; a host token file
    for the agent; returns the process and a reader token for a person."""
    db = f"sqlite:///{workdir / 'collector.db'}"
    collector_cli("migrate", "--db", db)
    token = workdir / "token"
    token.write_text(collector_cli("token", "create", "--db", db, HOST) + "\n", encoding="utf-8")
    token.chmod(0o600)
    reader = collector_cli("token", "create", "--db", db, "--reader", "demo")
    log = (workdir / "collector.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "agent.collector.cli", "serve", "--listen",
                             f"127.0.0.1:{port}", "--db", db], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, reader
        if proc.poll() is not None:
            raise SystemExit(f"demo: the collector did not start; see {workdir / 'collector.log'}")
        time.sleep(0.2)
    raise SystemExit("demo: the collector did not start in 30s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="checkout with playbooks/")
    parser.add_argument("--workdir", type=Path, default=Path("demo"), help="sandbox (recreated)")
    parser.add_argument("--port", type=int, default=8080, help="collector port on 127.0.0.1 (or a free one)")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    say(f"Config repo: {workdir / 'config-repo'} (from {args.project.resolve()}/playbooks, inventory)")
    make_config_repo(args.project.resolve(), workdir / "config-repo")
    port = free_port(args.port)
    collector, reader = start_collector(workdir, port)
    try:
        write_config(workdir, f"http://127.0.0.1:{port}")
        print((workdir / "agent.yaml").read_text(encoding="utf-8"))
        loop(workdir)
        say(f"The collector at http://127.0.0.1:{port} has every report")
        print(f"$ curl -H 'Authorization: Bearer {reader}' http://127.0.0.1:{port}/api/v1/hosts")
        print(json.dumps(read_hosts(port, reader), indent=2))
        if not os.environ.get("DEMO_NO_SERVE"):
            print(f"\nServing http://127.0.0.1:{port} (reader token above) until Ctrl-C ...", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                collector.wait()
    finally:
        collector.terminate()
        collector.wait(30)


def read_hosts(port: int, reader: str) -> object:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/hosts",
                                     headers={"Authorization": f"Bearer {reader}"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback only)
        return json.loads(response.read())


def loop(workdir: Path) -> None:
    say("First run: everything is new (intentional drift), so the agent applies and rechecks")
    agent(workdir, "run")
    managed = workdir / "root" / MANAGED
    say(f"Someone edits {managed} by hand")
    with managed.open("a", encoding="utf-8") as f:
        f.write("maintenance tonight -- bob\n")
    print(managed.read_text(encoding="utf-8"))
    say("Next run: corrective drift (the host changed, not Git), reverted")
    agent(workdir, "run")
    say("The drift that run found, as a diff")
    agent(workdir, "diff")
    say("Status")
    agent(workdir, "status")
    print(f"\nThe file is back to what Git says:\n{managed.read_text(encoding='utf-8')}")


if __name__ == "__main__":
    main()
