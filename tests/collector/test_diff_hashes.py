"""review_store.diff_sha256 remembers the hash of each set of diffs (DiffHashes): the same hash as hashing
them anew, for equal diffs sent in different reports, and within its character budget."""

from __future__ import annotations

import hashlib
import json

from agent.collector import review_store
from agent.collector.review_store import DiffHashes, diff_sha256
from agent.report import Diff, DriftItem, DriftKind


def item(*diffs: Diff) -> DriftItem:
    return DriftItem(play="web", task="nginx config", role="web", module="ansible.builtin.template",
                     kind=DriftKind.CORRECTIVE, diffs=diffs)


def by_hand(*diffs: Diff) -> str:
    """SHA-256 of the JSON [[path, before, after], ...], as review_store always hashed diffs."""
    parts = [[d.path, d.before, d.after] for d in diffs]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


def test_a_remembered_hash_is_the_hash_of_the_diffs_and_equal_diffs_share_it() -> None:
    one = (Diff("/etc/nginx/nginx.conf", "worker_processes 2;\n", "worker_processes 4;\n"),
           Diff("/etc/motd", None, "h\u00e9llo \u2603\n"))
    first = diff_sha256(item(*one))
    # equal diffs built anew (another report): same hash, from the memory or not
    again = diff_sha256(item(*(Diff(d.path, d.before, d.after) for d in one)))
    assert first == again == by_hand(*one)
    other = (Diff("/etc/nginx/nginx.conf", "worker_processes 2;\n", "worker_processes 8;\n"), one[1])
    assert diff_sha256(item(*other)) == by_hand(*other) != first
    assert diff_sha256(item()) is None


def test_the_memory_forgets_everything_past_its_budget_and_never_keeps_diffs_over_it() -> None:
    hashes = DiffHashes(max_chars=100)
    small = (Diff("/a", "x" * 20, "y" * 20),)  # 42 characters
    assert hashes.get(small) == by_hand(*small)
    assert hashes._hashes == {small: by_hand(*small)} and hashes._chars == 42
    second = (Diff("/b", "x" * 20, "z" * 20),)
    hashes.get(second)
    assert hashes._chars == 84 and len(hashes._hashes) == 2
    third = (Diff("/c", "x" * 20, "w" * 20),)  # 126 > 100: the two kept are forgotten, this one kept
    assert hashes.get(third) == by_hand(*third)
    assert hashes._hashes == {third: by_hand(*third)} and hashes._chars == 42
    huge = (Diff("/d", "x" * 200, None),)  # over the whole budget: hashed, not kept, nothing forgotten
    assert hashes.get(huge) == by_hand(*huge)
    assert hashes._hashes == {third: by_hand(*third)} and hashes._chars == 42


def test_the_collectors_memory_is_bounded() -> None:
    assert review_store.DIFF_HASHES.max_chars == 8 * 1024 * 1024
