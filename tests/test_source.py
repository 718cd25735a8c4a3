"""GitSource against real repositories: branches, tags, commits, mirrors, bundles, rewinds, offline."""

from __future__ import annotations

import subprocess
from pathlib import Path

import git
import pytest

from agent.config import validate
from agent.errors import RewindError, SourceError, SourceUnreachableError
from agent.source import GitSource
from agent.verify import SignatureRejectedError
from tests.conftest import GitRepo, make_repo


def source(tmp_path: Path, url: str | Path, **extra: object) -> GitSource:
    cfg = validate({"source": {"url": str(url), **extra}})
    return GitSource(cfg.source, tmp_path / "state")


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return make_repo(tmp_path / "origin", {"playbooks/app.yml": "- hosts: all\n", "README": "one\n"})


def test_branch_checkout_and_current_pointer(tmp_path: Path, repo: GitRepo) -> None:
    src = source(tmp_path, repo.path)
    rev = src.sync(last_commit=None)
    assert rev.commit == repo.head and not rev.offline and rev.previous_commit is None
    assert (rev.path / "playbooks/app.yml").is_file() and not (rev.path / ".git").exists()
    assert rev.subject == "initial" and rev.author == "Test Author <author@example.com>"
    assert rev.signature.status.value == "not_checked"
    assert src.current_commit() == rev.commit and (tmp_path / "state/current").resolve() == rev.path
    # a shallow cache: only the fetched commit
    assert (tmp_path / "state/repo/shallow").exists()


def test_tag_and_full_commit_refs(tmp_path: Path, repo: GitRepo) -> None:
    first = repo.head
    repo.git("tag", "-a", "v1", "-m", "release 1")
    repo.commit({"README": "two\n"})
    assert source(tmp_path / "a", repo.path, ref="v1").sync(last_commit=None).commit == first
    assert source(tmp_path / "b", f"file://{repo.path}", ref=first).sync(last_commit=None).commit == first


def test_unknown_ref_is_an_error(tmp_path: Path, repo: GitRepo) -> None:
    with pytest.raises(SourceUnreachableError, match="no source reachable"):
        source(tmp_path, repo.path, ref="nope").sync(last_commit=None)


def test_mirror_used_when_url_fails(tmp_path: Path, repo: GitRepo) -> None:
    mirror = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--mirror", str(repo.path), str(mirror)], check=True)
    rev = source(tmp_path, tmp_path / "gone.git", mirrors=[f"file://{mirror}"]).sync(last_commit=None)
    assert rev.commit == repo.head and rev.url == f"file://{mirror}"
    assert len(rev.fetch_errors) == 1 and "gone.git" in rev.fetch_errors[0]


def test_bundle_file_source(tmp_path: Path, repo: GitRepo) -> None:
    bundle = tmp_path / "fleet.bundle"
    repo.git("bundle", "create", str(bundle), "main")
    assert source(tmp_path, bundle).sync(last_commit=None).commit == repo.head


def test_offline_falls_back_to_last_commit(tmp_path: Path, repo: GitRepo) -> None:
    src = source(tmp_path, repo.path)
    first = src.sync(last_commit=None)
    subprocess.run(["rm", "-rf", str(repo.path)], check=True)
    rev = src.sync(last_commit=first.commit)
    assert rev.offline and rev.commit == first.commit and rev.path.is_dir()
    assert rev.fetch_errors and str(repo.path) in rev.fetch_errors[0]


def test_offline_without_history_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceUnreachableError):
        source(tmp_path, tmp_path / "nothing").sync(last_commit=None)


def test_fast_forward_is_accepted_even_when_shallow(tmp_path: Path, repo: GitRepo) -> None:
    src = source(tmp_path, f"file://{repo.path}")
    first = src.sync(last_commit=None).commit
    for i in range(3):
        repo.commit({"README": f"v{i}\n"})
    rev = src.sync(last_commit=first)
    assert rev.commit == repo.head and rev.previous_commit == first


def test_force_push_rewind_is_refused(tmp_path: Path, repo: GitRepo) -> None:
    src = source(tmp_path, f"file://{repo.path}")
    old = repo.head
    new = repo.commit({"README": "two\n"})
    src.sync(last_commit=old)
    repo.git("reset", "-q", "--hard", old)  # force-push back to the older commit
    with pytest.raises(RewindError, match=f"moved from {new[:12]} to {old[:12]}"):
        src.sync(last_commit=new)
    assert src.current_commit() == new  # the pointer did not move


def test_rewritten_history_is_refused_and_allowed_with_allow_rewind(tmp_path: Path, repo: GitRepo) -> None:
    src = source(tmp_path, f"file://{repo.path}")
    applied = src.sync(last_commit=None).commit
    repo.git("commit", "-q", "--amend", "-m", "rewritten")
    with pytest.raises(RewindError):
        src.sync(last_commit=applied)
    rev = source(tmp_path, f"file://{repo.path}", allow_rewind=True).sync(last_commit=applied)
    assert rev.commit == repo.head != applied


def test_releases_are_pruned_but_current_and_kept_stay(tmp_path: Path, repo: GitRepo) -> None:
    src = source(tmp_path, repo.path, keep_releases=2)
    commits = [src.sync(last_commit=None).commit]
    for i in range(4):
        repo.commit({"README": f"{i}\n"})
        commits.append(src.sync(last_commit=commits[-1], keep=(commits[0],)).commit)
    kept = {p.name for p in (tmp_path / "state/releases").iterdir() if not p.name.startswith(".")}
    assert kept == {commits[0], commits[-1], commits[-2]}


def test_credentials_never_in_errors(tmp_path: Path) -> None:
    url = "https://deploy:s3cr3tT0ken@127.0.0.1:9/ops/fleet.git"
    with pytest.raises(SourceError) as info:
        source(tmp_path, url, timeout="5s").sync(last_commit=None)
    assert "s3cr3tT0ken" not in str(info.value)


def test_links_inside_the_tree_are_checked_out(tmp_path: Path, repo: GitRepo) -> None:
    repo.git("checkout", "-q", "-b", "links")
    (repo.path / "link").symlink_to("README")
    repo.commit({}, "a link inside the tree")
    rev = source(tmp_path, repo.path, ref="links").sync(last_commit=None)
    assert (rev.path / "link").read_text() == "one\n"


def test_links_out_of_the_tree_are_refused(tmp_path: Path, repo: GitRepo) -> None:
    (repo.path / "escape").symlink_to("../../etc/passwd")
    repo.commit({}, "a link out")
    with pytest.raises(SourceError, match="refusing link 'escape'"):
        source(tmp_path, repo.path).sync(last_commit=None)


def test_a_fetch_error_says_what_went_wrong_not_git_s_advice() -> None:
    from agent.source import _one_line

    error = git.GitCommandError(["git", "fetch"], 128, stderr=(
        "Host key verification failed.\nfatal: Could not read from remote repository.\n\n"
        "Please make sure you have the correct access rights\nand the repository exists."))
    assert _one_line(error) == "Host key verification failed. fatal: Could not read from remote repository."


def test_a_converged_commit_is_checked_out_again_only_verified_and_as_an_ancestor(tmp_path: Path,
                                                                                  repo: GitRepo) -> None:
    """GitSource.release (docs/rollout.md, While C is held): the converged commit B, re-checked out
    while a newer commit C is held, passes the same checks as any checkout."""
    src = source(tmp_path, f"file://{repo.path}", keep_releases=1)
    converged = src.sync(last_commit=None).commit
    repo.commit({"README": "two\n"})
    held = src.sync(last_commit=converged).commit
    assert not (tmp_path / "state/releases" / converged).exists()  # pruned: written again from the cache
    rev = src.release(converged, head=held)
    assert rev.commit == converged and (rev.path / "README").read_text() == "one\n"
    assert src.current_commit() == held  # the pointer stays on the fetched commit
    # a commit that the fetched one does not descend from (another history) is refused
    repo.git("checkout", "-q", "--orphan", "other")
    stranger = repo.commit({"README": "other\n"}, "other history")
    source(tmp_path, f"file://{repo.path}", ref="other").sync(last_commit=None)  # in the cache now
    with pytest.raises(RewindError, match=f"converged commit {stranger[:12]} is not an ancestor"):
        src.release(stranger, head=held)
    # with signatures required, an unsigned converged commit is refused
    signers = tmp_path / "allowed_signers"
    signers.write_text("")
    strict = source(tmp_path, f"file://{repo.path}", verify="ssh", trusted_keys=str(signers))
    with pytest.raises(SignatureRejectedError) as refused:
        strict.release(converged, head=held)
    assert refused.value.outcome.commit == converged and not refused.value.outcome.accepted
