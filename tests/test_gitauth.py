"""Source credentials: HTTPS through a credential helper fed from source.credentials_file (a real smart-HTTP
server with basic auth), SSH through a pinned key and known_hosts (argv of a boundary-fake ssh)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from agent.config import validate
from agent.errors import SourceUnreachableError
from agent.gitauth import lookup, ssh_command
from agent.source import GitSource
from tests.conftest import make_repo
from tests.git_http import git_http_server

TOKEN = "glpat-Sup3rS3cret-t0ken"


def _tree_contains(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.fixture
def served(tmp_path: Path):
    repo = make_repo(tmp_path / "work", {"playbooks/app.yml": "- hosts: all\n"})
    root = tmp_path / "srv"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(root / "fleet.git")], check=True)
    with git_http_server(root, "deploy", TOKEN) as server:
        yield server, repo


def _source(tmp_path: Path, url: str, **extra: object) -> GitSource:
    return GitSource(validate({"source": {"url": url, **extra}}, base=tmp_path).source, tmp_path / "state")


def test_https_fetch_with_the_credentials_file_and_the_token_stays_secret(tmp_path, served):
    server, repo = served
    url = f"http://127.0.0.1:{server.server_port}/fleet.git"
    creds = tmp_path / "git-credentials"
    creds.write_text(f"http://other.example:{server.server_port}:x@nowhere\n"
                     f"http://deploy:{TOKEN.replace('-', '%2D')}@127.0.0.1:{server.server_port}\n")
    creds.chmod(0o600)
    revision = _source(tmp_path, url, credentials_file=str(creds)).sync(last_commit=None)
    assert revision.commit == repo.head and (revision.path / "playbooks/app.yml").is_file()
    assert any(auth for _, _, auth in server.seen)  # the server did ask for and get credentials
    assert _tree_contains(tmp_path / "state", TOKEN) == []  # cache config, releases, everything
    assert TOKEN not in (tmp_path / "state/repo/config").read_text()
    assert TOKEN not in repr(revision)


def test_https_without_credentials_fails_clearly_and_says_no_secret(tmp_path, served):
    server, _ = served
    url = f"http://127.0.0.1:{server.server_port}/fleet.git"
    with pytest.raises(SourceUnreachableError) as failed:
        _source(tmp_path / "none", url).sync(last_commit=None)
    assert "could not read Username" in str(failed.value) and "terminal prompts disabled" in str(failed.value)
    wrong = tmp_path / "wrong"
    wrong.write_text(f"http://deploy:not-it@127.0.0.1:{server.server_port}\n")
    wrong.chmod(0o600)
    with pytest.raises(SourceUnreachableError, match="Authentication failed") as refused:
        _source(tmp_path / "w", url, credentials_file=str(wrong)).sync(last_commit=None)
    assert "not-it" not in str(refused.value)
    assert wrong.read_text().startswith("http://deploy:not-it@")  # the helper never rewrites the file


def test_the_helper_matches_protocol_host_and_port():
    lines = "garbage\nhttps://u0:t0@git.example.com:port\nhttps://u1:t%401@git.example.com\nhttps://u2:t2@git.example.com:8443\n"
    assert lookup(lines, {"protocol": "https", "host": "git.example.com"}) == ("u1", "t@1")
    assert lookup(lines, {"protocol": "https", "host": "git.example.com:8443"}) == ("u2", "t2")
    assert lookup(lines, {"protocol": "http", "host": "git.example.com"}) is None


def test_ssh_command_pins_key_and_known_hosts(tmp_path: Path):
    key, known = tmp_path / "my key", tmp_path / "known hosts"
    cfg = validate({"source": {"url": "git@h:r.git", "known_hosts": str(known)}}).source
    assert ssh_command(cfg, None) == shlex.join(
        ["ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known}", "-o",
         "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes"])
    assert ssh_command(validate({"source": {"url": "x"}}).source, "ssh -v") == "ssh -v"
    assert ssh_command(validate({"source": {"url": "x"}}).source, None) == "ssh -o BatchMode=yes"
    key.write_text("k")
    key.chmod(0o600)
    cfg = validate({"source": {"url": "x", "ssh_key": str(key), "known_hosts": str(known)}}).source
    assert shlex.split(ssh_command(cfg, None))[3:7] == ["-i", str(key), "-o", "IdentitiesOnly=yes"]


def test_git_runs_ssh_with_the_pinned_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake `ssh` first on PATH (the boundary) records its argv and serves the repository locally, as
    sshd would run git-upload-pack; the real sshd/ssh handshake is not exercised here."""
    repo = make_repo(tmp_path / "origin", {"README": "x\n"})
    record = tmp_path / "ssh-argv"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ssh"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(record))}\n'
                    'for last; do :; done\nexec sh -c "$last"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text("k")
    key.chmod(0o600)
    url = f"ssh://git@git.example.com:2222{repo.path}"
    revision = _source(tmp_path, url, ssh_key=str(key), known_hosts=str(known)).sync(last_commit=None)
    assert revision.commit == repo.head
    argv = record.read_text().splitlines()
    assert argv[:11] == ["-o", "BatchMode=yes", "-i", str(key), "-o", "IdentitiesOnly=yes",
                         "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
                         "-o"]
    assert argv[11] == "StrictHostKeyChecking=yes"
    assert "git@git.example.com" in argv and "2222" in argv and "git-upload-pack" in argv[-1]
