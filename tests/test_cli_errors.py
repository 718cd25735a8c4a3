"""The CLI's bad-input table: every expected failure is ONE line on stderr, `gitops-agent: error: ...`,
and its sysexits code (64 usage, 74 disk, 75 lock busy, 78 configuration), never a traceback. Each row
runs `gitops-agent` as its own process, as an operator would; none starts Ansible.

A row: (id, world, argv, exit code, regex the one line must match). `world` names a setup below (a valid
config by default, or one with a broken part); `{config}` and `{tmp}` in argv are filled in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

BASE = {"host": "testhost", "source": {"url": "/nonexistent/repo"}, "lock_wait": "0s"}


def _config(tmp: Path, **changes: object) -> Path:
    data = {**BASE, "state_dir": str(tmp / "state"), **changes}
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _token(tmp: Path, text: str | None, mode: int = 0o600) -> Path:
    _config(tmp, collector={"url": "http://127.0.0.1:9", "token_file": str(tmp / "token")})
    if text is not None:
        (tmp / "token").write_text(text)
        (tmp / "token").chmod(mode)
    return tmp / "agent.yaml"


@contextmanager
def _lock_held(tmp: Path) -> Iterator[None]:
    _config(tmp)
    (tmp / "state").mkdir()
    code = ("import sys, time; from pathlib import Path; from agent.lock import cycle_lock\n"
            "with cycle_lock(Path(sys.argv[1]), wait_s=0):\n    print('held', flush=True); time.sleep(60)")
    with subprocess.Popen([sys.executable, "-c", code, str(tmp / "state/lock")], stdout=subprocess.PIPE,
                          text=True, cwd=ROOT) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        try:
            yield
        finally:
            holder.kill()


WORLDS: dict[str, Callable[[Path], object]] = {
    "valid": lambda tmp: _config(tmp),
    "no config": lambda tmp: None,
    "duplicate key": lambda tmp: (tmp / "agent.yaml").write_text(
        "source:\n  url: /r\nmode: detect\nmode: enforce\n"),
    "nested duplicate key": lambda tmp: (tmp / "agent.yaml").write_text(
        "source:\n  url: /r\n  ref: main\n  ref: prod\n"),
    "typo": lambda tmp: (tmp / "agent.yaml").write_text("source:\n  url: /r\nschedule:\n  intervall: 5m\n"),
    "bad value": lambda tmp: _config(tmp, mode="yolo"),
    "state_dir is a file": lambda tmp: (_config(tmp), (tmp / "state").write_text("")),
    "state_dir under a file": lambda tmp: (_config(tmp, state_dir=str(tmp / "file/state")),
                                           (tmp / "file").write_text("")),
    "token missing": lambda tmp: _token(tmp, None),
    "token readable by others": lambda tmp: _token(tmp, "gco_abc\n", 0o644),
    "token empty": lambda tmp: _token(tmp, "\n"),
    "token two words": lambda tmp: _token(tmp, "gco_abc gco_def\n"),
}
HELD_WORLDS = {"lock held": _lock_held}  # set up for the length of the command

ROWS = [
    ("pause --for banana", "valid", ["pause", "--reason", "x", "--for", "banana", "--config", "{config}"],
     64, r"pause: argument --for: 'banana' is not a duration \(use e\.g\. 30s, 5m, 1h, 2d\)"),
    ("pause --for 0", "valid", ["pause", "--reason", "x", "--for", "0", "--config", "{config}"],
     64, r"pause: argument --for: must be longer than 0s"),
    ("pause --reason ''", "valid", ["pause", "--reason", " ", "--config", "{config}"],
     64, r"pause: argument --reason: must not be empty"),
    ("pause without --reason", "valid", ["pause", "--config", "{config}"],
     64, r"pause: the following arguments are required: --reason"),
    ("unknown command", "valid", ["deploy"], 64, r"argument COMMAND: invalid choice: 'deploy'"),
    ("no command", "valid", [], 64, r"the following arguments are required: COMMAND"),
    ("unknown option", "valid", ["run", "--force", "--config", "{config}"],
     64, r"unrecognized arguments: --force"),
    ("missing config", "no config", ["status", "--config", "{tmp}/agent.yaml"],
     78, r"agent\.yaml: cannot read the configuration file \(No such file or directory\)"),
    ("duplicate key", "duplicate key", ["run", "--config", "{config}"],
     78, r"agent\.yaml: invalid YAML at line 4: duplicate key 'mode' \(first given at line 3\)"),
    ("duplicate nested key", "nested duplicate key", ["status", "--config", "{config}"],
     78, r"invalid YAML at line 4: duplicate key 'ref' \(first given at line 3\)"),
    ("unknown key", "typo", ["run", "--config", "{config}"],
     78, r"unknown key 'schedule\.intervall'; did you mean 'schedule\.interval'\?"),
    ("bad value", "bad value", ["run", "--config", "{config}"],
     78, r"'mode': expected one of: enforce, detect"),
    ("run: state_dir is a file", "state_dir is a file", ["run", "--config", "{config}"],
     78, r"state_dir .*/state is not a directory \(a file is in the way\)"),
    ("status: state_dir is a file", "state_dir is a file", ["status", "--config", "{config}"],
     78, r"state_dir .*/state is not a directory \(a file is in the way\)"),
    ("pause: state_dir under a file", "state_dir under a file", ["pause", "--reason", "x", "--config", "{config}"],
     78, r"state_dir .*/file/state: .*/file is not a directory"),
    ("run: token file missing", "token missing", ["run", "--config", "{config}"],
     78, r"'collector\.token_file': .*/token: cannot use it \(No such file or directory\); nothing was run "
         r"\(this attempt is reported as an error, queued in the outbox \(1 waiting\)\)"),
    ("run: token file readable by others", "token readable by others", ["run", "--config", "{config}"],
     78, r"'collector\.token_file': permissions 0644 for '.*/token' are too open"),
    ("run: token file empty", "token empty", ["run", "--config", "{config}"],
     78, r"'collector\.token_file': .*/token must hold one token on one line"),
    ("daemon: token file with two tokens", "token two words", ["daemon", "--config", "{config}"],
     78, r"'collector\.token_file': .*/token must hold one token on one line"),
    ("run: lock held", "lock held", ["run", "--config", "{config}"],
     75, r"another gitops-agent cycle is running on .*/state \(pid \d+\); waited 0s"),
    ("diff before any run", "valid", ["diff", "--config", "{config}"],
     1, r"no run yet \(no .*/state/last_run\.json\); try: gitops-agent run"),
    ("outbox --flush without a collector", "valid", ["outbox", "--flush", "--config", "{config}"],
     78, r"collector\.url is not set: there is nowhere to deliver to"),
]


def run_cli(args: list[str], *, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env={**os.environ, "NO_COLOR": "1"})


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, pattern: str) -> None:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert lines[0].startswith("gitops-agent: error: "), lines[0]
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    assert result.returncode == code, (result.returncode, lines[0])


@pytest.mark.parametrize(("world", "argv", "code", "pattern"), [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
def test_bad_input_is_one_line_with_its_exit_code(tmp_path: Path, world: str, argv: list[str], code: int,
                                                  pattern: str) -> None:
    config = tmp_path / "agent.yaml"
    args = [a.format(config=config, tmp=tmp_path) for a in argv]
    if world in HELD_WORLDS:
        with HELD_WORLDS[world](tmp_path):
            result = run_cli(args)
    else:
        WORLDS[world](tmp_path)
        result = run_cli(args)
    assert_one_line(result, code, pattern)
    assert not result.stdout.strip(), result.stdout


def test_the_table_is_big_enough() -> None:
    assert len(ROWS) >= 15 and len({r[0] for r in ROWS}) == len(ROWS)


# A read-only or full state_dir needs a mount: made in a private mount namespace of the command alone
# (unshare), so nothing on this machine changes. Root only (CI runs as root).
needs_mounts = pytest.mark.skipif(
    (os.geteuid() != 0 or not shutil.which("unshare")) and not os.environ.get("CI"),
    reason="needs root and unshare for a private mount namespace")


@needs_mounts
@pytest.mark.parametrize("kind", ["read-only", "full"])
@pytest.mark.parametrize("command", [["run"], ["pause", "--reason", "maintenance"], ["resume"]])
def test_read_only_or_full_state_dir(tmp_path: Path, kind: str, command: list[str]) -> None:
    config = _config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    mount = (f"mount --bind -o ro {state} {state}" if kind == "read-only" else
             f"mount -t tmpfs -o size=16k tmpfs {state} && head -c 16384 /dev/zero > {state}/fill 2>/dev/null; true")
    script = f"{mount} && exec \"$@\""
    result = run_cli([*command, "--config", str(config)], prefix=["unshare", "--mount", "sh", "-c", script, "sh"])
    if kind == "read-only":
        assert_one_line(result, 78, rf"state_dir {state}: cannot write in it \(Read-only file system\)")
    else:
        assert_one_line(result, 74, rf"state_dir {state}: cannot write in it \(No space left on device\)")


@pytest.mark.parametrize("command", [["status"], ["diff"], ["outbox"], ["status", "--json"], ["diff", "--json"]])
def test_a_closed_pipe_ends_quietly(tmp_path: Path, command: list[str]) -> None:
    """`gitops-agent status | head -1`: the reader went away; no BrokenPipeError, the shell's 141."""
    config = _token(tmp_path, None)
    assert run_cli(["run", "--config", str(config)]).returncode == 78  # leaves an error report behind
    with subprocess.Popen([sys.executable, "-m", "agent.cli", *command, "--config", str(config)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before it writes anything
        err = proc.stderr.read()
        assert proc.wait(60) == 141, err
    assert err == ""


def test_global_options_after_the_command_and_version(tmp_path: Path) -> None:
    config = _config(tmp_path)
    after = run_cli(["status", "--config", str(config), "-v"])
    before = run_cli(["-v", "--config", str(config), "status"])
    assert after.returncode == before.returncode == 1  # no run yet, and no error about the options
    assert after.stdout == before.stdout and "last run: none yet" in after.stdout
    version = run_cli(["--version"])
    assert version.returncode == 0 and re.fullmatch(r"gitops-agent \d+\.\d+\.\d+\n", version.stdout)


def test_a_refused_run_is_reported_and_the_json_views_show_it(tmp_path: Path) -> None:
    """A run refused before Ansible (the token file is missing) is still an attempt: an error report in
    last_run.json and the outbox (it reaches the collector once the token is fixed)."""
    config = _token(tmp_path, None)
    refused = run_cli(["run", "--json", "--config", str(config)])
    assert refused.returncode == 78 and len(refused.stderr.splitlines()) == 1
    report = json.loads(refused.stdout)
    assert (report["status"], report["phase_reached"], report["roles"]) == ("error", "fetch", [])
    assert "'collector.token_file'" in report["errors"][0]["message"]
    outbox = json.loads(run_cli(["outbox", "--json", "--config", str(config)]).stdout)
    assert [(e["run_id"], e["status"]) for e in outbox["pending"]] == [(report["run_id"], "error")]
    assert outbox["quarantined"] == [] and outbox["flush"] is None
    diff = run_cli(["diff", "--json", "--config", str(config)])
    assert diff.returncode == 0
    assert json.loads(diff.stdout) | {"finished_at": None} == {
        "run_id": report["run_id"], "status": "error", "commit": None, "finished_at": None, "drift": []}
    status = json.loads(run_cli(["status", "--json", "--config", str(config)]).stdout)
    assert status["last_run"]["run_id"] == report["run_id"] and status["outbox_depth"] == 1
