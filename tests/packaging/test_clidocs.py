"""The man page and shell completions made from the parsers (packaging/clidocs.py), checked without a
build: the page renders without groff warnings and names every command; the completions complete."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.collector.cli import build_parser
from agent.collector.fleet_cli import COMMANDS
from tests.packaging.test_packaging_static import _module

clidocs = _module("clidocs")


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clidocs")
    clidocs.stage(root, "gitops-collector", version="1.2.3", date="2026-01-02")
    return root


def test_man_page_names_every_command_and_renders_cleanly(staged: Path) -> None:
    page = staged / "usr/share/man/man1/gitops-collector.1.gz"
    with gzip.open(page, "rt") as f:
        text = f.read()
    assert text.startswith('.TH GITOPS\\-COLLECTOR "1" "2026\\-01\\-02" "gitops\\-agent 1.2.3"')
    for command in ("serve", "migrate", "token create", "token list", "token revoke", "prune", *COMMANDS):
        assert f"'gitops\\-collector {command}'" in text, command
    assert "\\-\\-token\\-file" in text and "GITOPS_COLLECTOR_TOKEN_FILE" in text
    assert ".SH EXIT STATUS" in text and "\\fB78\\fR" in text
    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    # what lintian runs on packaged man pages: any groff warning is a failure
    rendered = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)],
                              capture_output=True, text=True, env={"LC_ALL": "C.UTF-8", "MANWIDTH": "80",
                                                                   "PATH": "/usr/bin:/bin"}, check=False)
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr


@pytest.mark.parametrize(("words", "expected"), [
    (["to"], ["token"]),
    (["hosts", "--st"], ["--status", "--stale"]),
    (["hosts", "--status", ""], ["failed", "error", "drifted", "paused", "corrected", "in_sync"]),
    (["token", "l"], ["list"]),
])
def test_bash_completion_completes(staged: Path, words: list[str], expected: list[str]) -> None:
    script = staged / "usr/share/bash-completion/completions/gitops-collector"
    line = " ".join(f"'{w}'" for w in ["gitops-collector", *words])
    run = subprocess.run(["bash", "-c", f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; "
                          "_shtab_gitops_collector; printf '%s\\n' \"${COMPREPLY[@]}\""],
                         capture_output=True, text=True, check=True)
    assert run.stdout.split() == expected


def test_zsh_completion_is_a_valid_compdef(staged: Path) -> None:
    script = staged / "usr/share/zsh/vendor-completions/_gitops-collector"
    text = script.read_text()
    assert text.startswith("#compdef gitops-collector") and "hosts" in text and "--token-file" in text
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed")
    checked = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


def test_the_generator_sees_the_real_parser() -> None:
    assert clidocs._parser("gitops-collector").format_help() == build_parser().format_help()
