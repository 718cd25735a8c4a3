"""Fact gathering for a run: which facts the host's plays ask for, gathered once into a per-subset cache.

The agent runs Ansible with `smart` gathering and a fact cache (unless the repo's ansible.cfg chooses
otherwise): facts are gathered once, by a first play of its own (the prologue), and every play after it
reuses them. Under smart gathering a play does not gather again when facts are cached, so the prologue
must gather everything any play asks for: the union of their `gather_subset`s (Ansible's default, `all`,
for a play that gathers without naming one), plus the agent's `ansible.gather_subset`. The cache lives
in a folder named after that union, so a changed subset (a commit, or the agent's setting) starts from
fresh facts instead of reusing facts that lack what is now asked for.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROLOGUE_PLAYBOOK = "_gather_facts.yml"
_FALSE = ("false", "no", "0", "off", "n", "f")


@dataclass(frozen=True)
class Subset:
    """A gather_subset: names to gather and names to leave out (Ansible's `!name`)."""

    include: frozenset[str]
    exclude: frozenset[str] = frozenset()

    @property
    def ansible(self) -> list[str]:
        return sorted(self.include) + [f"!{name}" for name in sorted(self.exclude)]

    @property
    def key(self) -> str:
        """A short stable name for this subset (a cache folder name)."""
        return hashlib.sha256(json.dumps(self.ansible).encode()).hexdigest()[:16]


ALL = Subset(frozenset({"all"}))


def _subset(include: frozenset[str], exclude: frozenset[str]) -> Subset:
    """A Subset in its simplest form (`all` covers every other name; what it gathers is not left out)."""
    include = include or frozenset({"all"})
    if "all" in include:
        include = frozenset({"all"})
    return Subset(include, exclude - include)


def parse_subset(value: Any) -> Subset:
    """A play's gather_subset (a list, or a comma-separated string) -> Subset. A value Ansible would
    template, or anything else that cannot be read, counts as `all`."""
    if value is None:
        return ALL
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and "{" not in i for i in items):
        return ALL
    names = [i.strip() for i in items if i.strip()]
    include = frozenset(n for n in names if not n.startswith("!"))
    exclude = frozenset(n[1:] for n in names if n.startswith("!"))
    return _subset(include, exclude)


def union(subsets: Iterable[Subset], extra: Iterable[str] = ()) -> Subset:
    """Every fact any of `subsets` gathers: the names any includes, less only what all of them exclude.
    `extra` names are gathered too (the agent's ansible.gather_subset)."""
    found = list(subsets)
    include = frozenset().union(*(s.include for s in found), (e for e in extra if not e.startswith("!")))
    exclude = frozenset.intersection(*(s.exclude for s in found)) if found else frozenset()
    return _subset(include, exclude)


def _plays(book: Path) -> list[Any] | None:
    try:
        plays = yaml.safe_load(book.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return plays if isinstance(plays, list) else [plays]


def _gathers(play: dict[str, Any], implicit: bool) -> bool:
    value = play.get("gather_facts")
    if value is None:
        return implicit
    return str(value).strip().lower() not in _FALSE  # a templated value counts as gathering


def play_subsets(books: Iterable[Path], *, implicit: bool = True) -> list[Subset]:
    """The gather_subset of every play in `books` that gathers facts. `implicit`: a play without
    gather_facts gathers (Ansible's `implicit` and `smart` gathering; `explicit` makes it False).
    A playbook that cannot be read, or that imports others, counts as a play gathering `all`."""
    found = []
    for book in books:
        plays = _plays(book)
        if plays is None:
            found.append(ALL)
            continue
        for play in plays:
            if not isinstance(play, dict) or any("import_playbook" in key for key in play):
                found.append(ALL)
            elif _gathers(play, implicit):
                found.append(parse_subset(play.get("gather_subset")))
    return found


def prologue_subset(books: Iterable[Path], *, extra: Iterable[str], implicit: bool = True) -> Subset | None:
    """What the prologue gathers for these playbooks; None when no play gathers facts (no prologue)."""
    subsets = play_subsets(books, implicit=implicit)
    return union(subsets, extra) if subsets else None


def write_prologue(private: Path, host: str, subset: Subset) -> Path:
    """A first playbook that only gathers facts (`subset`) into the cache."""
    path = private / PROLOGUE_PLAYBOOK
    path.write_text(json.dumps([{"name": "Gather facts", "hosts": host, "gather_facts": True,
                                 "gather_subset": subset.ansible, "tasks": []}]), encoding="utf-8")
    return path


def cache_dir(root: Path, subset: Subset | None) -> Path:
    """The fact cache folder for runs gathering `subset` (0700; `root/none` when no play gathers).
    Caches of other subsets under `root` are removed: they are stale by definition, and facts include the
    environment."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = root / (subset.key if subset is not None else "none")
    for entry in root.iterdir() if subset is not None else ():
        if entry != target:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    target.mkdir(mode=0o700, exist_ok=True)
    return target
