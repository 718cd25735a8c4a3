"""Git: fetch the desired state, refuse rewinds, check a pinned commit out into its own directory.

state_dir/repo is a bare cache fetched shallowly (deepened only when ancestry must be proven). Each
commit's tree is written as signed (agent.checkout: no .git, no tar, no .gitattributes) into
releases/<sha>; `current` is a symlink switched
atomically; the last few releases stay for rollback and for running while every source is down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import git

from agent import checkout
from agent.config import SourceConfig
from agent.errors import RewindError, SourceError, SourceUnreachableError
from agent.fsutil import atomic_symlink, describe_os_error
from agent.gitauth import git_env, git_options
from agent.paths import StatePaths
from agent.redact import redact_text, redact_url
from agent.report import Signature, parse_time
from agent.verify import require_verified, verify_commit

log = logging.getLogger(__name__)
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
FETCHED = "refs/gitops/fetched"
DEEPEN_STEPS = (50, 500)
CAT_FILE_LIMITS = ("core.bigFileThreshold=1m", "core.packedGitWindowSize=16m", "core.packedGitLimit=64m")


@dataclass(frozen=True)
class Revision:
    commit: str
    path: Path  # the checked-out tree (releases/<sha>)
    url: str  # the source that served it
    ref: str
    previous_commit: str | None
    author: str | None = None
    committed_at: datetime | None = None
    subject: str | None = None
    signature: Signature = field(default_factory=Signature)
    fetch_errors: tuple[str, ...] = ()  # one line per source that failed
    offline: bool = False  # every source failed: this is the last checked-out commit


# Advice git prints after any failed connection: it hides the line that says what went wrong.
_GIT_ADVICE = ("Please make sure you have the correct access rights", "and the repository exists.")


def _one_line(error: Exception) -> str:
    """git's error as one line: its last few meaningful lines (e.g. ssh's reason, then git's fatal)."""
    text = str(getattr(error, "stderr", "") or error).strip().removeprefix("stderr:").strip().strip("'")
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith("'") and ln.strip() not in _GIT_ADVICE]
    return redact_text(" ".join(lines[-3:]) if lines else type(error).__name__)


def _pick_ref(listing: str, ref: str) -> str | None:
    """From `git ls-remote` output, the commit `ref` resolves to (branch, else peeled tag, else tag)."""
    refs: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        refs[name.strip()] = sha.strip()
    for name in (f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", ref):
        if name in refs:
            return refs[name]
    return None


class GitSource:
    def __init__(self, config: SourceConfig, state_dir: Path) -> None:
        self.config = config
        paths = StatePaths(state_dir)
        self.cache = paths.repo
        self.releases = paths.releases
        self.current = paths.current
        self.gnupg_home = paths.gnupg  # agent-private keyring for source.verify: gpg
        self._git_env = git_env(config, os.environ)
        # Fetched objects stay in packs (never unpacked into loose objects): git maps a loose object whole
        # to read it, but streams a packed one in bounded windows (CAT_FILE_LIMITS), and unpacking a big
        # object was the slow half of a fetch.
        self._git_options = [*git_options(config), "-c", "fetch.unpackLimit=1"]

    # -- public ------------------------------------------------------------------------------

    def sync(self, *, last_commit: str | None, keep: tuple[str, ...] = ()) -> Revision:
        """Fetch (url, then mirrors), resolve the ref, refuse rewinds, check out; offline fallback."""
        repo = self._repo()
        errors: list[str] = []
        for url in (self.config.url, *self.config.mirrors):
            try:
                commit = self._fetch(repo, url)
            except SourceError as e:
                log.info("source %s failed: %s", redact_url(url), e)  # the report says it
                errors.append(f"{redact_url(url)}: {e}")
                continue
            try:
                self._check_rewind(repo, url, commit, last_commit)
            except RewindError as e:  # name the source that served the other history
                raise RewindError(f"{redact_url(url)}: {e}") from e
            signature = self._verify(repo, commit)
            return self._checkout(repo, commit, url, last_commit, tuple(errors), keep, signature)
        return self._offline(repo, last_commit, tuple(errors))

    def release(self, commit: str, *, head: str) -> Revision:
        """A commit this host converged to, checked out again (releases/<sha>, reused when still there)
        for enforcing it while the rollout gate holds ``head`` (docs/rollout.md). Verified like any
        checkout: its own signature under source.verify (a commit that was accepted through a signed
        tag only, and is not signed itself, is refused: the tag has moved on), and ``head`` must descend
        from it unless source.allow_rewind. Does not move ``current``. VerifyError, RewindError or
        SourceError (one line) when it cannot be used."""
        repo = self._repo()
        if not FULL_SHA.match(commit):
            raise SourceError(f"converged commit {commit[:40]!r} is not a full commit id")
        try:
            self._check_rewind(repo, self.config.url, head, commit)
        except RewindError as e:
            raise RewindError(f"converged commit {commit[:12]} is not an ancestor of {head[:12]}: {e}") from e
        outcome = verify_commit(self.cache, commit, policy=self.config.verify,
                                trusted_keys=self.config.trusted_keys, gnupg_home=self.gnupg_home)
        signature = require_verified(outcome).signature
        path = self._export(repo, commit)
        author, when, subject = self._metadata(repo, commit)
        return Revision(commit=commit, path=path, url=redact_url(self.config.url), ref=self.config.ref,
                        previous_commit=None, author=author, committed_at=when, subject=subject,
                        signature=signature)

    def probe(self) -> str | None:
        """The commit source.ref points at now, by `git ls-remote` (milliseconds, no fetch); None when
        no source answers. A full commit id as ref never moves, so it is its own answer."""
        if FULL_SHA.match(self.config.ref):
            return self.config.ref
        repo = self._repo()
        for url in (self.config.url, *self.config.mirrors):
            try:
                found = _pick_ref(self._git(repo, "ls-remote", url, self.config.ref), self.config.ref)
            except SourceError as e:
                log.debug("probe of %s failed: %s", redact_url(url), e)
                continue
            if found:
                return found
        return None

    def current_commit(self) -> str | None:
        with contextlib.suppress(OSError):
            return self.current.readlink().name
        return None

    # -- fetching ----------------------------------------------------------------------------

    def _repo(self) -> git.Repo:
        try:
            if (self.cache / "HEAD").exists():
                return git.Repo(self.cache)
            self.cache.mkdir(parents=True, exist_ok=True)
            return git.Repo.init(self.cache, bare=True)
        except (git.GitError, OSError) as e:
            raise SourceError(f"git cache {self.cache} is unusable: {e}") from e

    def _git(self, repo: git.Repo, *args: str) -> str:
        try:
            out: str = repo.git.execute(["git", *self._git_options, *args], env=self._git_env,
                                        kill_after_timeout=self.config.timeout_s)
        except git.GitCommandError as e:
            raise SourceError(_one_line(e)) from e
        return out

    def _is_bundle(self, url: str) -> bool:
        return url.endswith(".bundle") and "://" not in url

    def _fetch(self, repo: git.Repo, url: str) -> str:
        ref = self.config.ref
        if self._is_bundle(url) and not Path(url).is_file():
            raise SourceUnreachableError(f"bundle file {url} does not exist")
        depth = [] if self.config.depth == 0 or self._is_bundle(url) else [f"--depth={self.config.depth}"]
        refspec = ref if FULL_SHA.match(ref) else f"+{ref}:{FETCHED}"
        try:
            self._git(repo, "fetch", "--no-tags", "--quiet", *depth, url, refspec)
        except SourceError as e:
            if not FULL_SHA.match(ref):
                raise
            # Servers that refuse a fetch by commit id: take every branch and tag, then look.
            log.debug("fetch by commit id refused (%s); fetching all refs", e)
            self._git(repo, "fetch", "--quiet", url, "+refs/heads/*:refs/gitops/heads/*",
                      "+refs/tags/*:refs/tags/*")
        target = ref if FULL_SHA.match(ref) else FETCHED
        try:
            return self._git(repo, "rev-parse", "--verify", "--quiet", f"{target}^{{commit}}").strip()
        except SourceError as e:
            raise SourceError(f"ref '{ref}' does not name a commit in {redact_url(url)}") from e

    # -- rewind protection -------------------------------------------------------------------

    def _is_ancestor(self, repo: git.Repo, old: str, new: str) -> bool:
        try:
            self._git(repo, "merge-base", "--is-ancestor", old, new)
        except SourceError:
            return False
        return True

    def _check_rewind(self, repo: git.Repo, url: str, new: str, last: str | None) -> None:
        if last is None or new == last or self.config.allow_rewind:
            return
        if self._is_ancestor(repo, last, new):
            return
        refspec = new if FULL_SHA.match(self.config.ref) else f"+{self.config.ref}:{FETCHED}"
        for deepen in (*(f"--deepen={n}" for n in DEEPEN_STEPS), "--unshallow"):
            # A shallow cache may just not hold the history between the two commits yet.
            if self._is_bundle(url) or not (self.cache / "shallow").exists():
                break
            self._git(repo, "fetch", "--no-tags", "--quiet", deepen, url, refspec)
            if self._is_ancestor(repo, last, new):
                return
        raise RewindError(
            f"ref '{self.config.ref}' moved from {last[:12]} to {new[:12]}, which does not descend "
            f"from it (history rewritten or an older commit replayed); refusing it. Set "
            f"source.allow_rewind: true to accept")

    # -- signatures --------------------------------------------------------------------------

    def _verify(self, repo: git.Repo, commit: str) -> Signature:
        """With source.verify on, an unsigned, bad or untrusted commit is refused before checkout."""
        tag = None
        named = self.config.verify != "none" and not FULL_SHA.match(self.config.ref)
        if named and self._git(repo, "cat-file", "-t", FETCHED).strip() == "tag":
            tag = self.config.ref.removeprefix("refs/tags/")
            self._git(repo, "update-ref", f"refs/tags/{tag}", FETCHED)
        outcome = verify_commit(self.cache, commit, policy=self.config.verify,
                                trusted_keys=self.config.trusted_keys, gnupg_home=self.gnupg_home,
                                ref_is_tag=tag)
        return require_verified(outcome).signature

    # -- checkout ----------------------------------------------------------------------------

    def _metadata(self, repo: git.Repo, commit: str) -> tuple[str, datetime | None, str]:
        text = self._git(repo, "show", "-s", "--format=%an <%ae>%x00%cI%x00%s", commit)
        author, when, subject = ([*text.split("\x00"), "", "", ""])[:3]
        return author, parse_time(when) if when else None, subject

    def _export(self, repo: git.Repo, commit: str) -> Path:
        """releases/<commit>: the commit's tree exactly as signed (agent.checkout), written into a
        temporary folder that is renamed into place when complete."""
        target = self.releases / commit
        if target.is_dir():
            os.utime(target)  # most recently used: pruned last
            return target  # never re-checkout an unchanged commit
        tmp: Path | None = None
        try:
            self.releases.mkdir(parents=True, exist_ok=True)
            raw = repo.git.execute(["git", "ls-tree", "-r", "-t", "-z", "--full-tree", commit],
                                   stdout_as_string=False)
            entries = checkout.parse_ls_tree(raw)
            problem = checkout.submodule_error(entries, commit)
            if problem is not None:
                raise problem
            # git's cat-file inflates a packed blob under core.bigFileThreshold (512 MiB) into memory and
            # maps packs in windows of up to 1 GiB: bound both, so that its memory stays flat too.
            repo.git.set_persistent_git_options(c=list(CAT_FILE_LIMITS))
            links = checkout.read_link_targets(entries, lambda oid: self._blob(repo, oid))
            checkout.validate(entries, links, commit)
            tmp = Path(tempfile.mkdtemp(prefix=f".{commit[:12]}-", dir=self.releases))
            checkout.write_tree(tmp, entries, links, lambda oid: self._blob(repo, oid))
            tmp.rename(target)
        except (SourceError, git.GitError, OSError) as e:
            repo.git.clear_cache()  # a blob may be half read: no further requests to that cat-file
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, SourceError):
                raise
            why = _one_line(e) if isinstance(e, git.GitError) else describe_os_error(e)
            raise SourceError(f"cannot check out {commit[:12]}: {why}") from e
        return target

    @staticmethod
    def _blob(repo: git.Repo, oid: str) -> Iterator[bytes]:
        """A blob's content in pieces, streamed from git's persistent `cat-file --batch`."""
        _, kind, size, stream = repo.git.stream_object_data(oid)
        if kind not in ("blob", b"blob"):  # GitPython gives bytes here
            stream.read(size)
            raise SourceError(f"object {oid[:12]} is a {kind!r}, not a file")
        left = size
        while left > 0:
            chunk = stream.read(min(checkout.CHUNK, left))
            if not chunk:
                raise SourceError(f"object {oid[:12]} ended early")
            left -= len(chunk)
            yield chunk

    def mark(self, env: Mapping[str, str]) -> None:
        """Extra environment for every git process of this source (the cycle's marker, agent.runner)."""
        self._git_env = {**self._git_env, **env}

    def clear_leftovers(self) -> list[str]:
        """What a killed cycle's git left, cleared: lock files (git refuses to run while they exist:
        "Unable to create '.../shallow.lock': File exists"), half-written release folders, and a cache git
        cannot open at all (moved aside as repo.corrupt-<time>, then fetched anew). Only under the cycle
        lock, after the earlier cycle's processes were killed. Returns what the report should say."""
        notes: list[str] = []
        if self.releases.is_dir():
            for partial in self.releases.glob(".*"):
                if partial.is_dir() and not partial.is_symlink():
                    shutil.rmtree(partial, ignore_errors=True)
                    log.warning("removed a half-written checkout: %s", partial)
        if self.cache.exists():
            try:
                self._repo()
            except SourceError as e:
                kept = self.cache.with_name(f"repo.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
                self.cache.replace(kept)
                log.error("%s: moved aside as %s", e, kept.name)
                return [f"{e}: moved aside as {kept.name}; the repository is fetched anew"]
        removed = []
        for folder, dirs, files in os.walk(self.cache):
            dirs[:] = [d for d in dirs if d != "objects"]
            for name in files:
                if name.endswith(".lock"):
                    path = Path(folder) / name
                    with contextlib.suppress(OSError):
                        path.unlink()
                        removed.append(str(path.relative_to(self.cache)))
        if removed:
            log.warning("removed stale git lock file(s) in %s: %s", self.cache, ", ".join(sorted(removed)))
        return notes

    def _checkout(self, repo: git.Repo, commit: str, url: str, last: str | None,
                  errors: tuple[str, ...], keep: tuple[str, ...], signature: Signature) -> Revision:
        path = self._export(repo, commit)
        atomic_symlink(self.current, f"releases/{commit}")
        self._prune({commit, *(k for k in keep if k)})
        author, when, subject = self._metadata(repo, commit)
        return Revision(commit=commit, path=path, url=redact_url(url), ref=self.config.ref,
                        previous_commit=last, author=author, committed_at=when, subject=subject,
                        signature=signature, fetch_errors=errors)

    def _offline(self, repo: git.Repo, last: str | None, errors: tuple[str, ...]) -> Revision:
        """Every source failed: keep running against the last checked-out commit, if there is one."""
        if last is None or not (self.releases / last).is_dir():
            raise SourceUnreachableError("no source reachable and no earlier commit to fall back on: "
                                         + "; ".join(errors))
        try:
            author, when, subject = self._metadata(repo, last)
        except SourceError:
            author, when, subject = None, None, None
        return Revision(commit=last, path=self.releases / last, url=redact_url(self.config.url),
                        ref=self.config.ref, previous_commit=last, author=author, committed_at=when,
                        subject=subject, fetch_errors=errors, offline=True)

    def _prune(self, keep: set[str]) -> None:
        entries = [p for p in self.releases.iterdir() if p.is_dir() and FULL_SHA.match(p.name)]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for index, path in enumerate(entries):
            if path.name not in keep and index >= self.config.keep_releases:
                shutil.rmtree(path, ignore_errors=True)
