"""agent.verify against real GPG and SSH signatures made by git with throwaway keys (see tests/gitsign.py).

One session fixture (`world`) holds the keys and one repository with every kind of commit and tag, so the
whole file runs in a few seconds.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import verify
from agent.errors import VerifyError
from agent.report import SignatureStatus as S
from agent.verify import SignatureRejectedError, VerifyOutcome, require_verified, verify_commit
from tests.gitsign import World, signing_world


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="gv", dir="/tmp"))
    try:
        with signing_world(root) as w:
            yield w
    finally:
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


def test_missing_ssh_keygen_is_an_error_not_a_verdict(world: World, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    git = shutil.which("git")
    assert git is not None
    (tmp_path / "git").symlink_to(git)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VerifyError, match="cannot run ssh-keygen"):
        ssh_check(world, "ssh_alice")


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
