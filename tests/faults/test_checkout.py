"""Checkout integrity: whatever tree a (trusted-signed) commit carries, the checkout writes only inside its
release folder, refuses what is not a plain tree (duplicate entries, `..`, `.git`, files below links,
links out, submodules) naming the path, and writes exactly the signed blobs (.gitattributes has no say).
Real Git repositories with crafted trees (raw tree objects where `git mktree` would refuse the shape)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent import checkout
from agent.config import SourceConfig
from agent.errors import SourceError
from agent.source import GitSource
from tests.conftest import GIT_ENV, GitRepo, make_repo


def git(repo: Path, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], input=stdin, capture_output=True, check=True,
                         env={**os.environ, **GIT_ENV, **(env or {})})
    return out.stdout.decode().strip()


def blob(repo: Path, data: bytes) -> str:
    return git(repo, "hash-object", "-w", "--stdin", stdin=data)


def raw_tree(repo: Path, entries: list[tuple[str, bytes, str]]) -> str:
    """A tree object written as given (order, duplicates, names with `/` kept): (mode, name, object id)."""
    data = b"".join(mode.encode() + b" " + name + b"\0" + bytes.fromhex(oid) for mode, name, oid in entries)
    return git(repo, "hash-object", "-t", "tree", "--literally", "-w", "--stdin", stdin=data)


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Path, Path]:
    """An SSH signing key and the allowed_signers file that trusts it."""
    key = tmp_path / "signer"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "signer", "-f", str(key)], check=True)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f'signer@example.com namespaces="git" {(tmp_path / "signer.pub").read_text()}')
    return key, allowed


def signed_commit(repo: Path, tree: str, key: Path, message: str = "crafted") -> str:
    commit = git(repo, "-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit-tree", "-S", tree,
                 "-p", "HEAD", "-m", message)
    git(repo, "update-ref", "refs/heads/main", commit)
    return commit


@pytest.fixture
def origin(tmp_path: Path) -> GitRepo:
    return make_repo(tmp_path / "origin", {"README": "one\n", "sub/file": "inside\n"})


def source(tmp_path: Path, url: Path, **changes: object) -> GitSource:
    config = SourceConfig(url=str(url), mirrors=(), ref="main", verify="none", trusted_keys=None,
                          allow_rewind=False, depth=1, keep_releases=3, timeout_s=30.0)
    return GitSource(config.__class__(**{**config.__dict__, **changes}), tmp_path / "state")


def outside_untouched(tmp_path: Path) -> None:
    written = [p for p in tmp_path.rglob("*") if p.name in ("escaped", "pwned")]
    assert written == [], f"written outside the release: {written}"


HOSTILE = {
    # name: (entries builder, message the refusal names)
    "a symlink and a folder of the same name (the CVE-2025-4517 shape)":
        (lambda r, f, t: [("120000", b"x", blob(r, b"sub")), ("40000", b"x", t)], "names 'x' twice"),
    "a file named twice": (lambda r, f, t: [("100644", b"f", f), ("100644", b"f", f)], "names 'f' twice"),
    "a '..' entry": (lambda r, f, t: [("40000", b"..", t)], "'..' is not a valid name"),
    "a '.git' folder": (lambda r, f, t: [("40000", b".git", t)], "'.git' is not a valid name"),
    "a '.GIT' folder": (lambda r, f, t: [("40000", b".GIT", t)], "'.GIT' is not a valid name"),
    "a name with a slash below a symlink": (
        lambda r, f, t: [("120000", b"l", blob(r, b"sub")), ("100644", b"l/escaped", f)],
        "its parent 'l' is a symlink"),
    "a name with a slash and no folder": (lambda r, f, t: [("100644", b"d/escaped", f)],
                                          "its parent 'd' is not a folder"),
    "an absolute link": (lambda r, f, t: [("120000", b"abs", blob(r, b"/etc/passwd"))], "refusing link 'abs'"),
    "a link up and out": (lambda r, f, t: [("120000", b"up", blob(r, b"../../x"))], "refusing link 'up'"),
    "a chain of links that leads out": (
        lambda r, f, t: [("120000", b"x", blob(r, b"y/..")), ("120000", b"y", blob(r, b"."))],
        "refusing link 'x' -> 'y/..'"),
    "a link loop": (lambda r, f, t: [("120000", b"a", blob(r, b"b")), ("120000", b"b", blob(r, b"a/c"))],
                    "refusing link"),
}


@pytest.mark.parametrize("shape", list(HOSTILE))
def test_a_signed_hostile_tree_is_refused_before_anything_is_written(tmp_path: Path, origin: GitRepo,
                                                                     signer: tuple[Path, Path], shape: str) -> None:
    build, message = HOSTILE[shape]
    payload = blob(origin.path, b"pwned\n")
    inner = raw_tree(origin.path, [("100644", b"escaped", payload)])
    tree = raw_tree(origin.path, [("100644", b"README", blob(origin.path, b"one\n")),
                                  *build(origin.path, payload, inner)])
    commit = signed_commit(origin.path, tree, signer[0])
    src = source(tmp_path, origin.path, verify="ssh", trusted_keys=signer[1])
    with pytest.raises(SourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        src.sync(last_commit=None)
    assert not (tmp_path / "state/releases" / commit).exists()
    assert [p.name for p in (tmp_path / "state/releases").iterdir()] == []  # no half-written temp folder
    outside_untouched(tmp_path)


def test_a_submodule_is_refused_naming_it_and_how_to_vendor_it(tmp_path: Path, origin: GitRepo) -> None:
    upstream = make_repo(tmp_path / "role", {"tasks/main.yml": "- debug: msg=hi\n"})
    origin.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(upstream.path), "roles/vendored")
    origin.git("commit", "-q", "-m", "a role as a submodule")
    with pytest.raises(SourceError) as info:
        source(tmp_path, origin.path).sync(last_commit=None)
    message = str(info.value)
    assert "Git submodules" in message and "'roles/vendored'" in message and upstream.head[:12] in message
    assert "vendor each one" in message and "git rm --cached PATH" in message
    assert "\n" not in message


def test_gitattributes_do_not_change_what_is_checked_out(tmp_path: Path, origin: GitRepo) -> None:
    files = {".gitattributes": "secret.yml export-ignore\nversion.txt export-subst\n*.txt text eol=crlf\n"
                               "inventory/** export-ignore\n",
             "secret.yml": "password: signed\n", "version.txt": "commit $Format:%H$ on $Format:%D$\n",
             "notes.txt": "line one\nline two\n", "inventory/hosts.yml": "all: {}\n"}
    commit = origin.commit(files, "attributes")
    (tmp_path / "state/repo/info").mkdir(parents=True)  # nor whatever the cache's own attributes say
    (tmp_path / "state/repo/info/attributes").write_text("* export-ignore\n")
    rev = source(tmp_path, origin.path).sync(last_commit=None)
    assert (tmp_path / "state/repo/info/attributes").exists()
    for name, text in files.items():
        assert (rev.path / name).read_bytes() == text.encode(), name
    assert rev.commit == commit


def test_files_keep_their_mode_and_links_inside_the_tree_work(tmp_path: Path, origin: GitRepo) -> None:
    (origin.path / "run.sh").write_text("#!/bin/sh\n")
    (origin.path / "run.sh").chmod(0o755)
    (origin.path / "link").symlink_to("sub/file")
    (origin.path / "sub/up").symlink_to("../README")
    origin.commit({}, "modes and links")
    rev = source(tmp_path, origin.path).sync(last_commit=None)
    assert (rev.path / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (rev.path / "README").stat().st_mode & 0o777 == 0o644
    assert (rev.path / "link").read_text() == "inside\n" and (rev.path / "sub/up").read_text() == "one\n"


def test_writing_is_inert_even_for_a_tree_that_was_not_validated(tmp_path: Path) -> None:
    """The writer itself never follows a link: a folder that is a link (planted, or from a bad tree)
    stops the write instead of leading it outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "release"
    target.mkdir()
    (target / "x").symlink_to(outside)
    entries = [checkout.Entry("100644", "0" * 40, "x/escaped")]
    with pytest.raises(OSError):
        checkout.write_tree(target, entries, {}, lambda oid: iter([b"pwned\n"]))
    entries = [checkout.Entry("100644", "0" * 40, "x")]
    with pytest.raises(FileExistsError):  # O_EXCL|O_NOFOLLOW: never through the planted link
        checkout.write_tree(target, entries, {}, lambda oid: iter([b"pwned\n"]))
    assert list(outside.iterdir()) == []
