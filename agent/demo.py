"""`make demo`: the whole loop on this machine, in a sandbox folder, with no server and no root.

1. makes a Git repository from the project's playbooks/ and inventory/ (the example config repo);
2. writes an agent.yaml for host web01.example.com whose target_root is demo/root, so every managed
   path lands under demo/ (the same agent code path as production: only the root differs);
3. runs `gitops-agent run`: the first apply (intentional drift, corrected);
4. edits a managed file by hand and runs again: corrective drift, shown as a diff, corrected;
5. shows `gitops-agent status`;
6. throughout, a collector on 127.0.0.1:8080 (SQLite in demo/) receives every report; the demo ends by
   showing the fleet with `gitops-collector hosts` and printing the web UI's URL and a reader token to
   sign in with; unless DEMO_NO_SERVE is set, it keeps serving until Ctrl-C (or SIGTERM).
The agent and the collector run as separate processes, exactly as an operator would run them. The port
is fixed: a port another program listens on stops the demo at once, with a message; connections of an
earlier run still closing (TIME_WAIT) do not count, as for the collector itself (SO_REUSEADDR).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

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


def claim_port(port: int) -> int:
    """`port` on 127.0.0.1 if nothing listens on it (0: any free port); binds the way uvicorn does, with
    SO_REUSEADDR, so that an earlier run's connections in TIME_WAIT do not count. Exits when it is taken."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise SystemExit(f"demo: port {port} on 127.0.0.1 is in use ({e.strerror}); stop what listens "
                             f"there, or give --port N") from None
        chosen: int = s.getsockname()[1]
        return chosen


def start_collector(workdir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """`gitops-collector serve` on 127.0.0.1 with a SQLite file in the demo folder; a host token file
    for the agent; returns the process and a reader token for a person (also in workdir/reader-token)."""
    db = f"sqlite:///{workdir / 'collector.db'}"
    collector_cli("migrate", "--db", db)
    token = workdir / "token"
    token.write_text(collector_cli("token", "create", "--db", db, HOST) + "\n", encoding="utf-8")
    token.chmod(0o600)
    reader = collector_cli("token", "create", "--db", db, "--reader", "demo")
    reader_file = workdir / "reader-token"
    reader_file.write_text(reader + "\n", encoding="utf-8")
    reader_file.chmod(0o600)
    log = (workdir / "collector.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "agent.collector.cli", "serve", "--listen",
                             f"127.0.0.1:{port}", "--db", db], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return proc, reader
            if proc.poll() is not None:
                raise SystemExit(f"demo: the collector did not start; see {workdir / 'collector.log'}")
            time.sleep(0.2)
        raise SystemExit("demo: the collector did not start in 30s")
    except BaseException:
        proc.terminate()
        proc.wait(30)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="checkout with playbooks/")
    parser.add_argument("--workdir", type=Path, default=Path("demo"), help="sandbox (recreated)")
    parser.add_argument("--port", type=int, default=8080, help="collector port on 127.0.0.1 (0: any free)")
    args = parser.parse_args()
    port = claim_port(args.port)  # before anything slow: a taken port stops the demo at once
    workdir = args.workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    say(f"Config repo: {workdir / 'config-repo'} (from {args.project.resolve()}/playbooks, inventory)")
    make_config_repo(args.project.resolve(), workdir / "config-repo")
    with stop_on_signals():
        collector, reader = start_collector(workdir, port)
        try:
            url = f"http://127.0.0.1:{port}"
            write_config(workdir, url)
            print((workdir / "agent.yaml").read_text(encoding="utf-8"))
            loop(workdir)
            show_collector(workdir, url, reader)
            if not os.environ.get("DEMO_NO_SERVE"):
                print(f"\nServing {url}/ until Ctrl-C ...", flush=True)
                collector.wait()
        except KeyboardInterrupt:
            print("\ndemo: stopping the collector", flush=True)
        finally:
            collector.terminate()
            collector.wait(30)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the demo like Ctrl-C, so that the collector it started stops with it."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def show_collector(workdir: Path, url: str, reader: str) -> None:
    say(f"The collector at {url} has every report")
    token_file = workdir / "reader-token"
    print(f"$ gitops-collector hosts --url {url} --token-file {token_file} --table", flush=True)
    subprocess.run([sys.executable, "-m", "agent.collector.cli", "hosts", "--url", url, "--token-file",
                    str(token_file), "--table"], check=True)
    say("The web UI")
    print(f"  URL:           {url}/\n  reader token:  {reader}")
    print(f"  Sign in: open the URL and paste the reader token (also in {token_file}) into the form.",
          flush=True)


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
