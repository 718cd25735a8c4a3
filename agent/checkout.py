"""One commit's tree, written into a fresh directory exactly as it was signed.

The tree comes from `git ls-tree -r -t -z` and each blob from `git cat-file --batch`, streamed to its file
in 1 MiB pieces. Nothing goes through `git archive` or tar, so:
- `.gitattributes` has no say: no export-ignore (dropped files), no export-subst (host-local ref names
  written into files), no eol/text conversion: every host gets the bytes of the signed blobs;
- no tar reader whose link checks can be outwitted (Python's tarfile data filter, CVE-2025-4517: a
  tree with duplicate entries made it write outside the release directory);
- memory stays flat whatever the size of the repository.

`validate` checks the whole tree before a byte is written (git fsck's rules that matter here), and
refuses it with a SourceError naming the path:
- every path component is a name: not empty, not `.` or `..`, not `.git` (any case);
- no path appears twice (duplicate tree entries), and the parent of every path is a tree of the commit
  (so nothing is written below a symlink or a file);
- modes are 100644/100755 (files), 120000 (symlinks), 040000 (trees); a gitlink (160000, a Git
  submodule) is refused with the way to vendor it; any other mode is refused;
- a symlink's target is relative and stays inside the tree, resolved through the tree's own symlinks.
`write_tree` then creates every file with O_CREAT|O_EXCL|O_NOFOLLOW relative to a directory descriptor
opened with O_NOFOLLOW, so even a tree these rules missed cannot make a write leave the directory.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.errors import SourceError

CHUNK = 1024 * 1024
MAX_LINK_BYTES = 4096
MAX_LINK_HOPS = 40  # as the kernel's limit on nested symlinks
FILE_MODES = {"100644": 0o644, "100755": 0o755}
LINK, TREE, GITLINK = "120000", "040000", "160000"

OpenBlob = Callable[[str], Iterator[bytes]]  # object id -> its content, in pieces


@dataclass(frozen=True)
class Entry:
    mode: str
    oid: str
    path: str  # relative, "/"-separated, as git names it (undecodable bytes kept as surrogates)

    @property
    def parts(self) -> list[str]:
        return self.path.split("/")


def parse_ls_tree(raw: bytes) -> list[Entry]:
    """`git ls-tree -r -t -z` output -> entries, in git's order (a tree before what it holds)."""
    entries = []
    for record in raw.split(b"\0"):
        if not record:
            continue
        meta, tab, name = record.partition(b"\t")
        fields = meta.split(b" ")
        if not tab or len(fields) != 3:
            raise SourceError(f"unexpected `git ls-tree` output: {record[:120]!r}")
        entries.append(Entry(fields[0].decode("ascii", "replace"), fields[2].decode("ascii", "replace"),
                             os.fsdecode(name)))
    return entries


def submodule_error(entries: Iterable[Entry], commit: str) -> SourceError | None:
    links = [e for e in entries if e.mode == GITLINK]
    if not links:
        return None
    named = ", ".join(f"'{e.path}' (commit {e.oid[:12]})" for e in links)
    return SourceError(
        f"commit {commit[:12]} has Git submodules, which the agent does not fetch: {named}; the signed "
        "tree must hold the files themselves: vendor each one (git rm --cached PATH; rm -rf "
        ".git/modules/PATH; copy the submodule's files into PATH without its .git; git add PATH; commit)")


def _check_name(entry: Entry) -> None:
    for part in entry.parts:
        if part in ("", ".", "..") or part.casefold() == ".git" or "\0" in part:
            raise SourceError(f"refusing path {entry.path!r} in the commit: {part!r} is not a valid name "
                              "for a file or folder in a tree")


def _escapes(link: str, target: str, links: dict[str, str]) -> bool:
    """Does `target` (of the symlink at path `link`) lead out of the tree, following the tree's links?"""
    if target.startswith("/") or not target:
        return True
    stack = link.split("/")[:-1]
    todo = deque(target.split("/"))
    hops = 0
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return True
            stack.pop()
            continue
        here = "/".join([*stack, part])
        if here in links:
            hops += 1
            inner = links[here]
            if hops > MAX_LINK_HOPS or inner.startswith("/") or not inner:
                return True
            todo.extendleft(reversed(inner.split("/")))
        else:
            stack.append(part)
    return False


def validate(entries: list[Entry], link_targets: dict[str, str], commit: str) -> None:
    """Refuse a tree that is not a plain tree of files, folders and links inside it (see the module doc)."""
    problem = submodule_error(entries, commit)
    if problem is not None:
        raise problem
    kinds: dict[str, str] = {}
    for entry in entries:
        _check_name(entry)
        if entry.mode not in (*FILE_MODES, LINK, TREE):
            raise SourceError(f"refusing {entry.path!r} in the commit: unsupported mode {entry.mode}")
        if entry.path in kinds:
            raise SourceError(f"refusing commit {commit[:12]}: its tree names {entry.path!r} twice "
                              "(duplicate tree entries; git fsck reports them too)")
        parent = entry.path.rpartition("/")[0]
        if parent and kinds.get(parent) != TREE:
            what = "a symlink" if kinds.get(parent) == LINK else "not a folder of the commit"
            raise SourceError(f"refusing {entry.path!r} in the commit: its parent {parent!r} is {what}")
        kinds[entry.path] = entry.mode
    for path, target in link_targets.items():
        if _escapes(path, target, link_targets):
            raise SourceError(f"refusing link {path!r} -> {target!r} out of the commit")


# -- writing ---------------------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Dirs:
    """A descriptor of the folder being written, reopened component by component from the root with
    O_NOFOLLOW whenever the folder changes (git lists a folder's entries together)."""

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.path: str | None = ""
        self.fd = self.root_fd

    def open(self, folder: str) -> int:
        if folder != self.path:
            self._close_current()
            fd = os.dup(self.root_fd)
            for part in folder.split("/") if folder else []:
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                finally:
                    os.close(fd)
                fd = next_fd
            self.path, self.fd = folder, fd
        return self.fd

    def _close_current(self) -> None:
        if self.fd != self.root_fd:
            os.close(self.fd)
        self.path, self.fd = None, self.root_fd

    def close(self) -> None:
        self._close_current()
        os.close(self.root_fd)


def _write_blob(fd: int, chunks: Iterator[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


def write_tree(target: Path, entries: list[Entry], link_targets: dict[str, str], open_blob: OpenBlob) -> None:
    """Create the folders, files (mode 0644/0755) and symlinks of a validated tree under `target` (an
    empty folder that only this process writes)."""
    dirs = _Dirs(target)
    try:
        for entry in entries:
            folder, _, name = entry.path.rpartition("/")
            if entry.mode == TREE:
                os.mkdir(name, 0o755, dir_fd=dirs.open(folder))
            elif entry.mode in FILE_MODES:
                fd = os.open(name, _FILE_FLAGS, FILE_MODES[entry.mode], dir_fd=dirs.open(folder))
                try:
                    os.fchmod(fd, FILE_MODES[entry.mode])  # whatever the umask
                    _write_blob(fd, open_blob(entry.oid))
                finally:
                    os.close(fd)
        for path, link in link_targets.items():
            folder, _, name = path.rpartition("/")
            os.symlink(link, name, dir_fd=dirs.open(folder))
    finally:
        dirs.close()


def read_link_targets(entries: list[Entry], open_blob: OpenBlob) -> dict[str, str]:
    """path -> target of every symlink entry (a target longer than PATH_MAX is refused)."""
    targets = {}
    for entry in entries:
        if entry.mode != LINK:
            continue
        data = b"".join(open_blob(entry.oid))
        if len(data) >= MAX_LINK_BYTES or b"\0" in data:
            raise SourceError(f"refusing link {entry.path!r} in the commit: its target is not a path")
        targets[entry.path] = os.fsdecode(data)
    return targets
