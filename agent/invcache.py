"""The inventory graph of a commit, cached in state_dir so an unchanged commit does not start
`ansible-inventory` every cycle.

A commit's static inventory (YAML/INI files, host_vars, group_vars) cannot change, so its graph is keyed
by commit + inventory path + host. A dynamic inventory can: an executable file (an inventory script) or
an inventory plugin config (a YAML file with a top-level `plugin:` key) anywhere in the inventory turns
the cache off for that commit, and Ansible parses it every cycle.

Each entry starts with a line holding the SHA-256 of the graph that follows; an entry that does not match
it (truncated, overwritten, binary garbage) is dropped and the graph parsed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from agent.fsutil import atomic_write

log = logging.getLogger(__name__)
KEEP = 10  # cached graphs kept (a few commits' worth)
_PLUGIN_KEY = re.compile(r"^plugin\s*:", re.MULTILINE)


def is_dynamic(inventory: Path) -> bool:
    """True when any inventory file is executable or is an inventory plugin's config."""
    files = [inventory] if inventory.is_file() else [p for p in inventory.rglob("*") if p.is_file()]
    for path in files:
        if os.access(path, os.X_OK):
            return True
        if path.suffix in (".yml", ".yaml"):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                if _PLUGIN_KEY.search(path.read_text(encoding="utf-8")):
                    return True
    return False


def _key(commit: str, inventory: str, host: str) -> str:
    return hashlib.sha256(f"{commit}\0{inventory}\0{host}".encode()).hexdigest()[:32]


def graph(cache_dir: Path, *, commit: str, inventory_name: str, host: str, inventory: Path,
          parse: Callable[[], str]) -> str:
    """The cached graph for this commit, else parse() (stored unless the inventory is dynamic)."""
    if is_dynamic(inventory):
        log.debug("inventory %s is dynamic: not cached", inventory_name)
        return parse()
    path = cache_dir / f"{_key(commit, inventory_name, host)}.graph"
    cached = _read(path)
    if cached is not None:
        return cached
    text = parse()
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, f"{_digest(text)}\n{text}".encode())
    _prune(cache_dir)
    return text


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _read(path: Path) -> str | None:
    """The cached graph, or None when there is none; an entry that fails its checksum is removed."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    digest, _, text = data.partition(b"\n")
    try:
        graph_text = text.decode("utf-8")
        good = digest.decode("ascii") == _digest(graph_text)
    except UnicodeDecodeError:
        good = False
    if not good:
        log.warning("inventory cache entry %s is damaged: dropped, parsing the inventory again", path.name)
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return graph_text


def _prune(cache_dir: Path) -> None:
    entries = sorted(cache_dir.glob("*.graph"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        old.unlink(missing_ok=True)
