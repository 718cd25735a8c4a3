"""agent.verify against real GPG and SSH signatures made by git with throwaway keys.

One session fixture (`world`) makes the keys and one repository holding every kind of commit and tag:
- GPG keys: alice (trusted), mallory (not trusted), old (trusted but expired: created and used with
  gpg --faked-system-time in January 2020 with a one-day expiry, so it is expired now; no sleeping),
  rev (trusted, signs a commit, then revoked by importing its own revocation certificate).
- SSH keys: alice (in allowed_signers), mallory (not), plus an allowed_signers file where mallory's
  key has valid-before in 2020 (expired).
- Tampered commits: a signed commit object with its message edited and re-hashed, signature kept.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent import verify
from agent.errors import VerifyError
from agent.report import SignatureStatus as S
from agent.verify import SignatureRejectedError, VerifyOutcome, require_verified, verify_commit

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


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="gv", dir="/tmp"))  # short: gpg-agent's socket path has a limit
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
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def gnupg_home(world: World) -> Path:
    return world.root / "agent-gnupg"  # shared by tests that use the standard trusted dir


def gpg_check(world: World, name: str, home: Path, **kw: object) -> VerifyOutcome:
    opts: dict[str, object] = {"policy": "gpg", "trusted_keys": world.trusted, "gnupg_home": home} | kw
    return verify_commit(world.repo, world.c.get(name, name), **opts)  # type: ignore[arg-type]


def ssh_check(world: World, name: str, **kw: object) -> VerifyOutcome:
    opts: dict[str, object] = {"policy": "ssh", "trusted_keys": world.allowed,
                               "gnupg_home": world.root / "unused"} | kw
    return verify_commit(world.repo, world.c.get(name, name), **opts)  # type: ignore[arg-type]


# --- policy none ---------------------------------------------------------------------------------


def test_policy_none_runs_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("ran a process"))
    outcome = verify_commit(tmp_path, "abc", policy="none", trusted_keys=None, gnupg_home=tmp_path / "g")
    assert outcome.status is S.NOT_CHECKED and outcome.accepted
    assert require_verified(outcome) is outcome
    assert not (tmp_path / "g").exists()


# --- gpg -----------------------------------------------------------------------------------------


def test_gpg_signed_by_trusted_key_is_verified(world: World, gnupg_home: Path) -> None:
    outcome = gpg_check(world, "alice", gnupg_home)
    assert outcome.status is S.VERIFIED
    assert outcome.signer == f"Alice <alice@example.com> [{world.fpr['alice']}]"
    assert outcome.commit == world.c["alice"] and outcome.tag is None
    assert require_verified(outcome).signature.status is S.VERIFIED
    assert stat.S_IMODE(gnupg_home.stat().st_mode) == 0o700


def test_gpg_unsigned(world: World, gnupg_home: Path) -> None:
    outcome = gpg_check(world, "unsigned", gnupg_home)
    assert (outcome.status, outcome.signer) == (S.UNSIGNED, None)
    with pytest.raises(SignatureRejectedError) as e:
        require_verified(outcome)
    assert isinstance(e.value, VerifyError) and e.value.outcome is outcome
    assert str(e.value) == f"commit {world.c['unsigned'][:7]}: not signed"


def test_gpg_wrong_key_is_untrusted_and_named(world: World, gnupg_home: Path) -> None:
    outcome = gpg_check(world, "mallory", gnupg_home)
    assert outcome.status is S.UNTRUSTED and outcome.signer == world.fpr["mallory"]
    assert outcome.message() == (f"commit {world.c['mallory'][:7]}: signed by untrusted key "
                                 f"{world.fpr['mallory']} (not in {world.trusted})")


def test_gpg_expired_key_is_untrusted(world: World, gnupg_home: Path) -> None:
    outcome = gpg_check(world, "old", gnupg_home)
    assert outcome.status is S.UNTRUSTED
    assert outcome.reason == f"signed by expired key {world.fpr['old']}"


def test_gpg_revoked_key_is_untrusted(world: World, gnupg_home: Path) -> None:
    outcome = gpg_check(world, "rev", gnupg_home)
    assert outcome.status is S.UNTRUSTED
    assert outcome.reason == f"signed by revoked key {world.fpr['rev']}"


def test_gpg_tampered_commit_is_bad(world: World, gnupg_home: Path) -> None:
    outcome = gpg_check(world, "bad", gnupg_home)
    assert (outcome.status, outcome.signer) == (S.BAD, None)
    assert outcome.reason.startswith("bad signature")
    assert not outcome.accepted


def test_gpg_policy_refuses_ssh_signature(world: World, gnupg_home: Path) -> None:
    outcome = gpg_check(world, "ssh_alice", gnupg_home)
    assert outcome.status is S.UNTRUSTED and "ssh signature" in outcome.reason


def test_gpg_ignores_callers_keyring_and_git_config(world: World, gnupg_home: Path,
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The signer's own keyring (where mallory's key is ultimately trusted) and a hostile global config.
    (tmp_path / ".gitconfig").write_text("[gpg]\n\tprogram = /bin/false\n\tminTrustLevel = ultimate\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GNUPGHOME", str(world.root / "gh"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / ".gitconfig"))
    assert gpg_check(world, "mallory", gnupg_home).status is S.UNTRUSTED
    assert gpg_check(world, "alice", gnupg_home).status is S.VERIFIED


def test_keyring_reimported_only_when_keys_change(world: World, tmp_path: Path) -> None:
    trusted, home = tmp_path / "keys", tmp_path / "gnupg"
    shutil.copytree(world.trusted, trusted)
    assert gpg_check(world, "alice", home, trusted_keys=trusted).status is S.VERIFIED
    stamp = (home / verify.STAMP).stat().st_mtime_ns
    assert gpg_check(world, "alice", home, trusted_keys=trusted).status is S.VERIFIED
    assert (home / verify.STAMP).stat().st_mtime_ns == stamp  # unchanged keys: no import
    (trusted / "alice.asc").unlink()  # a key removed from trusted_keys leaves the keyring too
    assert gpg_check(world, "alice", home, trusted_keys=trusted).status is S.UNTRUSTED


def test_refuses_a_personal_keyring_as_gnupg_home(world: World) -> None:
    personal = world.root / "gh"  # the signers' home: it holds secret keys
    before = (personal / "pubring.kbx").read_bytes()
    with pytest.raises(VerifyError, match="personal GnuPG keyring"):
        gpg_check(world, "alice", personal)
    assert (personal / "pubring.kbx").read_bytes() == before


def test_trusted_keys_may_be_one_file(world: World, tmp_path: Path) -> None:
    keyfile = world.trusted / "alice.asc"
    outcome = gpg_check(world, "alice", tmp_path / "g", trusted_keys=keyfile)
    assert outcome.status is S.VERIFIED
    outcome = gpg_check(world, "old", tmp_path / "g", trusted_keys=keyfile)
    assert outcome.reason.endswith(f"(not in {keyfile})")


@pytest.mark.parametrize(("setup", "expected"), [
    ("missing", "does not exist"),
    ("empty", "has no .asc/.gpg/.pub key files"),
    ("garbage", "no OpenPGP public key could be imported"),
])
def test_unusable_trusted_keys_raise(world: World, tmp_path: Path, setup: str, expected: str) -> None:
    keys = tmp_path / "keys"
    if setup != "missing":
        keys.mkdir()
    if setup == "garbage":
        (keys / "x.asc").write_text("hello\n")
    with pytest.raises(VerifyError, match=expected):
        gpg_check(world, "alice", tmp_path / "g", trusted_keys=keys)


def test_setup_errors_raise(world: World, gnupg_home: Path) -> None:
    with pytest.raises(VerifyError, match="trusted_keys must be set"):
        gpg_check(world, "alice", gnupg_home, trusted_keys=None)
    with pytest.raises(VerifyError, match="is not one of"):
        gpg_check(world, "alice", gnupg_home, policy="x509")
    with pytest.raises(VerifyError, match="rev-parse"):
        gpg_check(world, "0" * 40, gnupg_home)


# --- annotated tags ------------------------------------------------------------------------------


def test_signed_tag_verifies_the_commit_it_points_to(world: World, gnupg_home: Path) -> None:
    assert gpg_check(world, "mallory", gnupg_home).status is S.UNTRUSTED
    for ref in ("v1", "refs/tags/v1"):
        outcome = gpg_check(world, "mallory", gnupg_home, ref_is_tag=ref)
        assert outcome.status is S.VERIFIED and outcome.tag == "v1"
        assert outcome.commit == world.c["mallory"] and outcome.signer is not None
        assert outcome.reason.startswith("tag v1: good signature by Alice")


@pytest.mark.parametrize(("commit", "tag", "status", "why"), [
    ("unsigned", "v2", S.UNSIGNED, "not signed; tag v2: signed by untrusted key"),
    ("unsigned", "light", S.UNSIGNED, "not signed; tag light: lightweight, not signed"),
    ("unsigned", "v3", S.UNSIGNED, "tag v3: tag object is named 'v0'"),
    ("old", "v1", S.UNTRUSTED, "points to"),
])
def test_tag_that_does_not_vouch(world: World, gnupg_home: Path, commit: str, tag: str, status: S,
                                 why: str) -> None:
    outcome = gpg_check(world, commit, gnupg_home, ref_is_tag=tag)
    assert outcome.status is status and outcome.tag is None
    assert why in outcome.reason


def test_ssh_signed_tag(world: World) -> None:
    assert ssh_check(world, "ssh_mallory").status is S.UNTRUSTED
    outcome = ssh_check(world, "ssh_mallory", ref_is_tag="s1")
    assert outcome.status is S.VERIFIED and outcome.tag == "s1"


# --- ssh -----------------------------------------------------------------------------------------


def test_ssh_signed_by_allowed_signer_is_verified(world: World) -> None:
    outcome = ssh_check(world, "ssh_alice")
    assert outcome.status is S.VERIFIED
    assert outcome.signer is not None and outcome.signer.startswith("alice@example.com [SHA256:")


@pytest.mark.parametrize(("name", "status", "why"), [
    ("unsigned", S.UNSIGNED, "not signed"),
    ("ssh_mallory", S.UNTRUSTED, "signed by untrusted key SHA256:"),
    ("ssh_bad", S.BAD, "bad signature"),
    ("alice", S.UNTRUSTED, "has an openpgp signature but source.verify is ssh"),
])
def test_ssh_rejections(world: World, name: str, status: S, why: str) -> None:
    outcome = ssh_check(world, name)
    assert outcome.status is status and why in outcome.reason
    with pytest.raises(SignatureRejectedError):
        require_verified(outcome)


def test_ssh_wrong_key_names_allowed_signers(world: World) -> None:
    assert ssh_check(world, "ssh_mallory").reason.endswith(f"(not in {world.allowed})")


def test_ssh_expired_key(world: World) -> None:
    outcome = ssh_check(world, "ssh_mallory", trusted_keys=world.allowed_expired)
    assert outcome.status is S.UNTRUSTED and outcome.reason.startswith("signed by expired key SHA256:")


def test_ssh_needs_an_allowed_signers_file(world: World) -> None:
    with pytest.raises(VerifyError, match="is not an allowed_signers file"):
        ssh_check(world, "ssh_alice", trusted_keys=world.root)


# --- pure parsing --------------------------------------------------------------------------------


def test_classify_gpg_other_error_and_garbage() -> None:
    errsig = "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 0123456789ABCDEF 99 8 00 1795709074 4\n"
    status, signer, reason = verify.classify_gpg(errsig, frozenset(), ok=False, trusted_label="k")
    assert (status, signer) == (S.UNTRUSTED, "0123456789ABCDEF") and "gpg error code 4" in reason
    assert verify.classify_gpg("", frozenset(), ok=False, trusted_label="k")[0] is S.BAD


def test_signature_kind() -> None:
    head = "tree 1\nauthor a\ncommitter c\n"
    assert verify.signature_kind(head + "\nmsg\n", "commit") is None
    assert verify.signature_kind(head + "gpgsig -----BEGIN SSH SIGNATURE-----\n x\n\nm\n", "commit") == "ssh"
    body = "object 1\ntype commit\ntag v\n\nmsg\n-----BEGIN PGP SIGNATURE-----\nx\n"
    assert verify.signature_kind(body, "tag") == "openpgp"
    assert verify.signature_kind(head + "\n-----BEGIN PGP SIGNATURE-----\n", "commit") is None
