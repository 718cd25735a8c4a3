"""`gitops-agent --help` (top level and every command) builds its parser without loading what a cycle
needs (httpx, rich, Ansible, the daemon): each command's function is imported when it runs
(agent.cli.COMMANDS). Checked in a fresh interpreter (`sys.modules`); bench/cli_start.py times it."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

from agent import __version__
from agent.cli import COMMANDS, build_parser

PROBE = textwrap.dedent("""\
    import contextlib, io, json, sys
    from agent.cli import COMMANDS, main
    helps = {}
    for argv in [["--help"], *([name, "--help"] for name in COMMANDS)]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main(argv)
            except SystemExit as e:
                assert e.code == 0, (argv, e.code)
        helps[" ".join(argv)] = out.getvalue()
    print(json.dumps({"helps": helps, "modules": sorted(sys.modules)}))
    """)


def test_help_of_every_command_loads_no_cycle_modules():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                          check=True)
    result = json.loads(done.stdout)
    for name in COMMANDS:
        assert result["helps"][f"{name} --help"].startswith(f"usage: gitops-agent {name}")
    assert "configuration:" in result["helps"]["--help"]  # the epilog with config.describe()
    loaded = set(result["modules"])
    heavy = {m for m in loaded if m.split(".")[0] in ("httpx", "rich", "ansible", "ansible_runner", "git")}
    assert heavy == set()
    assert not loaded & {"agent.cli_cycle", "agent.cli_state", "agent.daemon", "agent.cycle", "agent.sender"}


def test_every_command_runs_its_own_function():
    """Each command's `module:function` names the function it ran before it was imported lazily, and
    runs it: `version` end to end."""
    choices = next(a.choices for a in build_parser()._actions if a.dest == "command")
    assert isinstance(choices, dict) and set(COMMANDS) == set(choices)
    for name, target in COMMANDS.items():
        module, _, function = target.partition(":")
        assert function == f"cmd_{name}"
        assert callable(getattr(importlib.import_module(module), function))
    done = subprocess.run([sys.executable, "-m", "agent.cli", "version"], capture_output=True, text=True,
                          timeout=60, check=True)
    assert __version__ in done.stdout
