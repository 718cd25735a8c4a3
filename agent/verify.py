"""Commit signature verification (source.verify: none | gpg | ssh); the one place that runs gpg for it.

GPG: the keys in ``source.trusted_keys`` (a file, or a directory of .asc/.gpg/.pub files) are imported into
an agent-private keyring (``gnupg_home``, 0700, never ~/.gnupg), again only when the key files change.
SSH: ``trusted_keys`` is an ``allowed_signers`` file. Git runs without system and global config. With
``ref_is_tag``, a valid signature on that annotated tag verifies the commit it points to."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from agent.errors import VerifyError
from agent.fsutil import atomic_write
from agent.report import Signature, SignatureStatus

POLICIES = {"none": None, "gpg": "openpgp", "ssh": "ssh"}  # policy -> the signature format it accepts
KEY_SUFFIXES = (".asc", ".gpg", ".pub")
GPG_CONF = "no-autostart\ntrust-model always\nno-auto-key-retrieve\n"
STAMP = "trusted-keys.json"
TIMEOUT_S = 60.0
_KEYRING_FILES = ("pubring.kbx", "pubring.kbx~", "pubring.gpg", "pubring.gpg~", "trustdb.gpg", STAMP)
_SIG_KINDS = {"PGP SIGNATURE": "openpgp", "SSH SIGNATURE": "ssh", "SIGNED MESSAGE": "x509"}
_S = SignatureStatus
_GPG_UNTRUSTED = {"EXPKEYSIG": "signed by expired key", "REVKEYSIG": "signed by revoked key",
                  "EXPSIG": "expired signature by key"}
_SSH_GOOD_FOR = 'Good "git" signature for '
_SSH_UNTRUSTED = {"key has expired": "expired", "not yet valid": "not yet valid", "revoked": "revoked"}
SignatureCheck = tuple[SignatureStatus, str | None, str]


@dataclass(frozen=True)
class VerifyOutcome:
    """What verification found for one commit. ``reason`` is one line without the commit prefix."""

    commit: str
    policy: str
    status: SignatureStatus
    signer: str | None = None
    reason: str = ""
    tag: str | None = None  # the annotated tag whose signature verified the commit, if that is how

    @property
    def signature(self) -> Signature:  # the report's view
        return Signature(status=self.status, signer=self.signer)

    @property
    def accepted(self) -> bool:  # may this commit run: verified, or policy none
        return self.policy == "none" or self.status is _S.VERIFIED

    def message(self) -> str:
        return f"commit {self.commit[:7]}: {self.reason}"


class SignatureRejectedError(VerifyError):
    """The commit's signature is unsigned, bad or untrusted under policy gpg/ssh; carries the outcome."""

    def __init__(self, outcome: VerifyOutcome) -> None:
        super().__init__(outcome.message())
        self.outcome = outcome


def require_verified(outcome: VerifyOutcome) -> VerifyOutcome:
    """Return the outcome if the commit may run; else raise SignatureRejectedError (a VerifyError)."""
    if not outcome.accepted:
        raise SignatureRejectedError(outcome)
    return outcome


@dataclass(frozen=True)
class _Ctx:
    policy: str
    trusted_keys: Path
    env: dict[str, str]
    git_config: tuple[str, ...]
    fingerprints: frozenset[str]


def verify_commit(git_dir: Path, commit: str, *, policy: str, trusted_keys: Path | None, gnupg_home: Path,
                  ref_is_tag: str | None = None) -> VerifyOutcome:
    """Check `commit` in the repository at `git_dir` (bare or work tree) under `policy`: an outcome for any
    commit, signed or not. Raises VerifyError only when verification itself cannot be done (unknown policy
    or commit, missing or unreadable trusted keys, gpg or git missing)."""
    if policy not in POLICIES:
        raise VerifyError(f"source.verify: {policy!r} is not one of {', '.join(POLICIES)}")
    if policy == "none":
        return VerifyOutcome(commit, policy, _S.NOT_CHECKED, reason="signature not checked (verify: none)")
    if trusted_keys is None:
        raise VerifyError(f"source.trusted_keys must be set when source.verify is {policy}")
    ctx = _context(policy, trusted_keys, gnupg_home)
    sha = _git(ctx, git_dir, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}").strip()
    outcome = _check_object(ctx, git_dir, sha, "commit")
    if outcome.status is _S.VERIFIED or ref_is_tag is None:
        return outcome
    tag_outcome = _check_tag(ctx, git_dir, sha, ref_is_tag)
    tag_reason = f"tag {ref_is_tag.removeprefix('refs/tags/')}: {tag_outcome.reason}"
    if tag_outcome.status is _S.VERIFIED:
        return replace(tag_outcome, reason=tag_reason)
    return replace(outcome, reason=f"{outcome.reason}; {tag_reason}")


def _context(policy: str, trusted_keys: Path, gnupg_home: Path) -> _Ctx:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0",
               GNUPGHOME=str(gnupg_home), LC_ALL="C", LANGUAGE="C")
    config = ["gpg.program=gpg", "gpg.openpgp.program=gpg", "gpg.ssh.program=ssh-keygen",
              "gpg.minTrustLevel=undefined"]
    fingerprints: frozenset[str] = frozenset()
    if policy == "gpg":
        fingerprints = ensure_keyring(trusted_keys, gnupg_home, env=env)
    else:
        if not trusted_keys.is_file():
            raise VerifyError(f"source.trusted_keys: {trusted_keys} is not an allowed_signers file")
        config += ["gpg.format=ssh", f"gpg.ssh.allowedSignersFile={trusted_keys}"]
    git_config = tuple(arg for item in config for arg in ("-c", item))
    return _Ctx(policy, trusted_keys, env, git_config, fingerprints)


def _check_object(ctx: _Ctx, git_dir: Path, obj: str, kind: str) -> VerifyOutcome:
    sig_kind = signature_kind(_git(ctx, git_dir, "cat-file", kind, obj), kind)
    if sig_kind is None:
        return VerifyOutcome(obj, ctx.policy, _S.UNSIGNED, reason="not signed")
    if sig_kind != POLICIES[ctx.policy]:
        reason = f"has an {sig_kind} signature but source.verify is {ctx.policy}"
        return VerifyOutcome(obj, ctx.policy, _S.UNTRUSTED, reason=reason)
    proc = _run(["git", "-C", str(git_dir), *ctx.git_config, f"verify-{kind}", "--raw", obj], ctx.env)
    output, ok, label = proc.stdout + proc.stderr, proc.returncode == 0, str(ctx.trusted_keys)
    if not ok and "cannot run " in output:  # gpg or ssh-keygen missing: no verdict about the commit
        raise VerifyError(f"git verify-{kind}: {output.strip().splitlines()[-1]}")
    if ctx.policy == "gpg":
        status, signer, reason = classify_gpg(output, ctx.fingerprints, ok=ok, trusted_label=label)
    else:
        status, signer, reason = classify_ssh(output, ok=ok, trusted_label=label)
    return VerifyOutcome(obj, ctx.policy, status, signer, reason)


def _check_tag(ctx: _Ctx, git_dir: Path, commit: str, tag: str) -> VerifyOutcome:
    ref = tag if tag.startswith("refs/") else f"refs/tags/{tag}"
    name, sha = ref.removeprefix("refs/tags/"), _git(ctx, git_dir, "rev-parse", "--verify", ref).strip()
    if _git(ctx, git_dir, "cat-file", "-t", sha).strip() != "tag":
        return VerifyOutcome(commit, ctx.policy, _S.UNSIGNED, reason="lightweight, not signed")
    target = _git(ctx, git_dir, "rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}").strip()
    if target != commit:
        return VerifyOutcome(commit, ctx.policy, _S.UNTRUSTED, reason=f"points to {target[:7]}, not here")
    head = _git(ctx, git_dir, "cat-file", "tag", sha).split("\n\n", 1)[0].splitlines()
    tag_name = next((line[4:] for line in head if line.startswith("tag ")), None)
    if tag_name != name:
        return VerifyOutcome(commit, ctx.policy, _S.UNTRUSTED, reason=f"tag object is named {tag_name!r}")
    return replace(_check_object(ctx, git_dir, sha, "tag"), commit=commit, tag=name)


# --- pure parsing ---

def signature_kind(raw: str, kind: str) -> str | None:
    """openpgp | ssh | x509 for a signed commit or tag object's text, None when unsigned."""
    if kind == "commit":
        head = raw.split("\n\n", 1)[0].splitlines()
        armor = next((ln.split(" ", 1)[1] for ln in head if ln.startswith(("gpgsig ", "gpgsig-sha256 "))), "")
    else:
        armor = next((ln for ln in reversed(raw.splitlines()) if ln.startswith("-----BEGIN ")), "")
    return next((n for m, n in _SIG_KINDS.items() if armor.startswith(f"-----BEGIN {m}-----")), None)


def classify_gpg(output: str, fingerprints: frozenset[str], *, ok: bool,
                 trusted_label: str) -> SignatureCheck:
    """Status, signer and reason from gpg's --status-fd lines (as `git verify-* --raw` prints them)."""
    status: dict[str, list[str]] = {}
    for line in output.splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, _, rest = line[9:].partition(" ")
            status.setdefault(keyword, rest.split(" "))
    valid = status.get("VALIDSIG", [])
    fpr = valid[9] if len(valid) > 9 else (valid[0] if valid else None)
    for keyword, what in _GPG_UNTRUSTED.items():
        if keyword in status:
            return _S.UNTRUSTED, _signer(status[keyword], fpr), f"{what} {fpr or status[keyword][0]}"
    if "BADSIG" in status:
        return _S.BAD, None, f"bad signature (claims key {status['BADSIG'][0]})"
    if "ERRSIG" in status:
        err = status["ERRSIG"]
        key = err[6] if len(err) > 6 else err[0]
        if "NO_PUBKEY" in status:
            return _S.UNTRUSTED, key, f"signed by untrusted key {key} (not in {trusted_label})"
        code = err[5] if len(err) > 5 else "?"
        return _S.UNTRUSTED, key, f"signature by key {key} cannot be checked (gpg error code {code})"
    if "GOODSIG" in status and fpr is not None:
        signer = _signer(status["GOODSIG"], fpr)
        if ok and fpr in fingerprints:
            return _S.VERIFIED, signer, f"good signature by {signer}"
        return _S.UNTRUSTED, signer, f"signed by untrusted key {fpr} (not in {trusted_label})"
    return _S.BAD, None, "signature could not be read"


def _signer(fields: list[str], fpr: str | None) -> str:  # "User <id> [FINGERPRINT]" from "KEYID User <id>"
    return f"{' '.join(fields[1:])} [{fpr or fields[0]}]" if len(fields) > 1 else (fpr or fields[0])


def classify_ssh(output: str, *, ok: bool, trusted_label: str) -> SignatureCheck:
    """Status, signer and reason from ssh-keygen -Y output (as `git verify-* --raw` prints it, LC_ALL=C)."""
    good = [ln for ln in output.splitlines() if ln.startswith('Good "git" signature ')]
    key = good[0].rsplit(" key ", 1)[-1].strip() if good else None
    if good and good[0].startswith(_SSH_GOOD_FOR) and ok:
        principal = good[0][len(_SSH_GOOD_FOR):].rsplit(" with ", 1)[0]
        signer = f"{principal} [{key}]"
        return _S.VERIFIED, signer, f"good signature by {signer}"
    if good:
        for needle, why in _SSH_UNTRUSTED.items():
            if needle in output:
                return _S.UNTRUSTED, key, f"signed by {why} key {key}"
        return _S.UNTRUSTED, key, f"signed by untrusted key {key} (not in {trusted_label})"
    return _S.BAD, None, "bad signature" if "verification failed" in output else "signature could not be read"


# --- keyring ---

def ensure_keyring(trusted_keys: Path, gnupg_home: Path, *, env: dict[str, str]) -> frozenset[str]:
    """Import the trusted keys into `gnupg_home` unless they are unchanged; return their fingerprints."""
    files = key_files(trusted_keys)
    digest = _digest(files)
    _prepare_home(gnupg_home)
    cached = _read_stamp(gnupg_home / STAMP, digest)
    if cached is not None and (gnupg_home / "pubring.kbx").exists():
        return cached
    for name in _KEYRING_FILES:  # a key removed from trusted_keys must leave the keyring too
        (gnupg_home / name).unlink(missing_ok=True)
    found: set[str] = set()
    for path in files:
        proc = _run(["gpg", "--batch", "--no-tty", "--status-fd", "1", "--import", str(path)], env)
        imported = {ln.split()[-1] for ln in proc.stdout.splitlines() if ln.startswith("[GNUPG:] IMPORT_OK ")}
        if not imported:
            raise VerifyError(f"source.trusted_keys: no OpenPGP public key could be imported from {path}")
        found |= imported
    atomic_write(gnupg_home / STAMP, json.dumps({"digest": digest, "fingerprints": sorted(found)}).encode())
    return frozenset(found)


def _prepare_home(gnupg_home: Path) -> None:
    if gnupg_home.resolve() == (Path.home() / ".gnupg").resolve() or any(gnupg_home.glob("private-keys*/*")):
        raise VerifyError(f"{gnupg_home} holds a personal GnuPG keyring; "
                          "the agent needs a directory of its own")
    gnupg_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    gnupg_home.chmod(0o700)
    conf = gnupg_home / "gpg.conf"
    if not conf.exists() or conf.read_text() != GPG_CONF:
        atomic_write(conf, GPG_CONF.encode())


def key_files(trusted_keys: Path) -> list[Path]:
    """The key files named by source.trusted_keys: the file itself, or a directory's .asc/.gpg/.pub."""
    if trusted_keys.is_file():
        return [trusted_keys]
    if not trusted_keys.is_dir():
        raise VerifyError(f"source.trusted_keys: {trusted_keys} does not exist")
    files = sorted(p for p in trusted_keys.iterdir() if p.suffix in KEY_SUFFIXES and p.is_file())
    if not files:
        raise VerifyError(f"source.trusted_keys: {trusted_keys} has no {'/'.join(KEY_SUFFIXES)} key files")
    return files


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _read_stamp(stamp: Path, digest: str) -> frozenset[str] | None:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(stamp.read_text())
        if isinstance(data, dict) and data.get("digest") == digest:
            return frozenset(str(f) for f in data.get("fingerprints", []))
    return None


# --- processes ---

def _git(ctx: _Ctx, git_dir: Path, *args: str) -> str:
    proc = _run(["git", "-C", str(git_dir), *ctx.git_config, *args], ctx.env)
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or ["not found"]
        raise VerifyError(f"git {args[0]} {args[-1]} failed: {detail[0]}")
    return proc.stdout


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=TIMEOUT_S,
                              check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError as e:
        raise VerifyError(f"{argv[0]} is not installed (needed for signature verification)") from e
    except subprocess.TimeoutExpired as e:
        raise VerifyError(f"{argv[0]} {argv[-2]} did not finish within {TIMEOUT_S:.0f}s") from e
