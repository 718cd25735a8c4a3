"""Throwaway signing keys and a repository of signed, unsigned and tampered commits, made by real gpg/ssh/git.

`signing_world(root)` makes the keys and one repository holding every kind of commit and tag:
- GPG keys: alice (trusted), mallory (not trusted), old (trusted but expired: created and used with
  gpg --faked-system-time in January 2020 with a one-day expiry, so it is expired now; no sleeping),
  rev (trusted, signs a commit, then revoked by importing its own revocation certificate).
- SSH keys: alice (in allowed_signers), mallory (not), plus an allowed_signers file where mallory's
  key has valid-before in 2020 (expired).
- Tampered commits: a signed commit object with its message edited and re-hashed, signature kept.
- Tags: v1 (signed by alice, on mallory's commit), v2 (signed by mallory), light (lightweight),
  v3 (the signed tag object "v0" published under another name), s1 (ssh-signed by alice).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PAST = "20200101T120000"


def run(*argv: str, env: dict[str, str], cwd: Path | None = None, stdin: str | None = None) -> str:
    proc = subprocess.run(argv, env=env, cwd=cwd, input=stdin, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc.stdout.strip()


@dataclass
class World:
    root: Path
    repo: Path
    trusted: Path  # directory: alice.asc, old.asc, rev.asc
    allowed: Path  # ssh allowed_signers: alice
    allowed_expired: Path  # ssh allowed_signers: mallory, valid-before 2020
    fpr: dict[str, str] = field(default_factory=dict)
    c: dict[str, str] = field(default_factory=dict)  # commit name -> sha


def _gen_gpg_key(env: dict[str, str], uid: str, *, past: bool = False) -> str:
    faked = ["--faked-system-time", PAST] if past else []
    run("gpg", "--batch", "--passphrase", "", *faked, "--quick-gen-key", uid, "ed25519", "sign", "1d",
        env=env)
    out = run("gpg", "--with-colons", "--list-keys", uid, env=env)
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


class Git:
    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.repo, self.env = repo, env

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        return run("git", "-c", "user.name=Test", "-c", "user.email=t@example.com", *args,
                   env=self.env, cwd=self.repo, stdin=stdin)

    def commit(self, msg: str, *signing_config: str) -> str:
        sign = ["-S"] if signing_config else []
        self(*signing_config, "commit", "-q", "--allow-empty", *sign, "-m", msg)
        return self("rev-parse", "HEAD")

    def tamper(self, sha: str) -> str:
        raw = self("cat-file", "commit", sha) + "\n"
        return self("hash-object", "-t", "commit", "-w", "--stdin", stdin=raw.replace("\n\n", "\n\nEVIL ", 1))


def _make_keys(w: World, env: dict[str, str]) -> None:
    for name in ("alice", "mallory", "rev"):
        w.fpr[name] = _gen_gpg_key(env, f"{name.title()} <{name}@example.com>")
    w.fpr["old"] = _gen_gpg_key(env, "Old <old@example.com>", past=True)
    w.trusted.mkdir()
    for name in ("alice", "old"):
        (w.trusted / f"{name}.asc").write_text(run("gpg", "--armor", "--export", w.fpr[name], env=env))
    (w.trusted / "README").write_text("not a key, ignored\n")
    for name in ("alice", "mallory"):
        key = str(w.root / f"ssh_{name}")
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key, env=env)
    pub = {n: " ".join((w.root / f"ssh_{n}.pub").read_text().split()[:2]) for n in ("alice", "mallory")}
    w.allowed.write_text(f'alice@example.com namespaces="git" {pub["alice"]}\n')
    w.allowed_expired.write_text(f'mallory@example.com valid-before="20200102" {pub["mallory"]}\n')
    gpg_past = w.root / "gpg-past"
    gpg_past.write_text(f'#!/bin/sh\nexec gpg --faked-system-time {PAST} "$@"\n')
    gpg_past.chmod(0o755)


def _make_commits(w: World, git: Git, env: dict[str, str]) -> None:
    def gpg(name: str) -> list[str]:
        return ["-c", f"user.signingkey={w.fpr[name]}", "-c", "gpg.format=openpgp"]

    def ssh(name: str) -> list[str]:
        return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={w.root / f'ssh_{name}'}"]

    c = w.c
    c["unsigned"] = git.commit("unsigned")
    c["alice"] = git.commit("alice", *gpg("alice"))
    c["mallory"] = git.commit("mallory", *gpg("mallory"))
    c["old"] = git.commit("old", *gpg("old"), "-c", f"gpg.program={w.root / 'gpg-past'}")
    c["rev"] = git.commit("rev", *gpg("rev"))
    c["ssh_alice"] = git.commit("ssh alice", *ssh("alice"))
    c["ssh_mallory"] = git.commit("ssh mallory", *ssh("mallory"))
    c["bad"], c["ssh_bad"] = git.tamper(c["alice"]), git.tamper(c["ssh_alice"])
    git(*gpg("alice"), "tag", "-s", "-m", "release 1", "v1", c["mallory"])
    git(*gpg("mallory"), "tag", "-s", "-m", "release 2", "v2", c["unsigned"])
    git("tag", "light", c["unsigned"])
    git(*gpg("alice"), "tag", "-s", "-m", "release 0", "v0", c["unsigned"])
    git("update-ref", "refs/tags/v3", git("rev-parse", "refs/tags/v0"))  # a signed tag under another name
    git(*ssh("alice"), "tag", "-s", "-m", "ssh release", "s1", c["ssh_mallory"])
    # Revoke "rev" after it signed, then trust its (now revoked) public key.
    revcert = (Path(env["GNUPGHOME"]) / "openpgp-revocs.d" / f"{w.fpr['rev']}.rev").read_text()
    run("gpg", "--batch", "--import", env=env, stdin=revcert.replace(":-----BEGIN", "-----BEGIN"))
    (w.trusted / "rev.asc").write_text(run("gpg", "--armor", "--export", w.fpr["rev"], env=env))


@contextmanager
def signing_world(root: Path) -> Iterator[World]:
    """Build the world under `root` (keep it short: gpg-agent's socket path has a length limit)."""
    home = root / "gh"
    home.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GNUPGHOME=str(home), GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", LC_ALL="C")
    w = World(root, root / "repo", root / "trusted", root / "allowed_signers", root / "allowed_expired")
    try:
        run("git", "init", "-q", str(w.repo), env=env)
        _make_keys(w, env)
        _make_commits(w, Git(w.repo, env), env)
        yield w
    finally:  # stop the gpg-agent that signing started for this home
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False, capture_output=True)
