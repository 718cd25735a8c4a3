"""Pure: a report that fits under a size cap, so that the collector can always accept it.

The collector refuses a body over its `--max-body` (default 5 MiB, agent.collector.context) with 413 and a
string over 1 MiB characters (agent.collector.payload) with 422; both would leave the report in the
outbox's quarantine for good. `fit` keeps a report as it is when it is small enough, and otherwise trims,
least valuable first, until the encoded JSON is at most `max_bytes`:
  1. every text longer than MAX_TEXT_CHARS is cut (always, whatever the total);
  2. diffs: each diff's before/after is cut to a common length, halved until the report fits (down to
     MIN_DIFF_CHARS); then diffs are left out altogether;
  3. error and failed-task messages are cut to MIN_DIFF_CHARS;
  4. drift items are left out from the last one on (their count is said);
  5. errors and warnings are left out from the last one on.
A drift item whose diffs were cut or left out has `diff_truncated: true`; the report has `truncated: true`
and a line in `warnings` saying what was done. Cut text ends with a note saying how much was left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

from agent.report import Diff, DriftItem, ErrorItem, FailedTask, Report, encode, to_json

MAX_REPORT_BYTES = 4 * 1024 * 1024  # below the collector's default body limit (5 MiB)
MAX_TEXT_CHARS = 512 * 1024  # below the collector's limit on one string (1 MiB characters)
MIN_DIFF_CHARS = 2048


def size_bytes(report: Report) -> int:
    """The size of the report as the outbox stores and sends it."""
    return len(to_json(report).encode("utf-8"))


def cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"\n[gitops-agent: {len(text) - limit} more characters not shown: report size cap]"


def _cut_diffs(item: DriftItem, limit: int) -> DriftItem:
    diffs = tuple(Diff(d.path, cut(d.before, limit), cut(d.after, limit)) for d in item.diffs)
    if diffs == item.diffs:
        return item
    return replace(item, diffs=diffs, diff_truncated=True)


def _cut_messages(report: Report, limit: int) -> Report:
    errors = tuple(ErrorItem(e.phase, cut(e.message, limit) or "") for e in report.errors)
    apply = report.apply
    if apply is not None:
        apply = replace(apply, failed_tasks=tuple(FailedTask(t.task, cut(t.message, limit) or "")
                                                  for t in apply.failed_tasks))
    return replace(report, errors=errors, apply=apply)


def _longest_side(report: Report) -> int:
    return max((len(s) for d in report.drift for x in d.diffs for s in (x.before, x.after) if s), default=0)


def _note(report: Report, note: str) -> Report:
    return replace(report, truncated=True, warnings=(*report.warnings, note))


def _shrink_list(report: Report, max_bytes: int, field: str,
                 make: Callable[[Report, int], Report]) -> Report:
    """Keep the longest prefix of a list field that fits, at least none.

    The JSON of `make(report, n)` is that of `make(report, 0)` plus the first n elements, each followed
    by json.dumps's ", " but the last; so n is found from the elements' sizes, taken once, and only the
    last steps serialize the whole report (`make` may change more than the list, for example a count in
    a warning, which the sizes do not see). A 20,000-item report thus costs a few serializations, not one
    per step of a binary search.
    """
    items = getattr(report, field)
    total, n = size_bytes(make(report, 0)), 0
    for item in items:
        grown = total + len(json.dumps(encode(item), ensure_ascii=False).encode("utf-8")) + (2 if n else 0)
        if grown > max_bytes:
            break
        total, n = grown, n + 1
    while n > 0 and size_bytes(make(report, n)) > max_bytes:
        n -= 1
    while n < len(items) and size_bytes(make(report, n + 1)) <= max_bytes:
        n += 1
    return make(report, n)


def fit(report: Report, max_bytes: int = MAX_REPORT_BYTES) -> Report:
    """The report, trimmed (see the module doc) so that its JSON is at most `max_bytes`."""
    before = size_bytes(report)
    capped = replace(_cut_messages(report, MAX_TEXT_CHARS),
                     drift=tuple(_cut_diffs(d, MAX_TEXT_CHARS) for d in report.drift))
    if capped != report:
        report = _note(capped, f"texts longer than {MAX_TEXT_CHARS} characters were cut")
        if size_bytes(report) <= max_bytes:
            return report
    elif before <= max_bytes:
        return report
    limit = _longest_side(report)
    while limit > MIN_DIFF_CHARS:
        limit //= 2
        trial = replace(report, drift=tuple(_cut_diffs(d, max(limit, MIN_DIFF_CHARS)) for d in report.drift))
        if size_bytes(trial) <= max_bytes:
            return _note(trial, f"the report was {before} bytes, over its cap of {max_bytes}: each diff "
                                f"was cut to {max(limit, MIN_DIFF_CHARS)} characters")
    report = replace(report, drift=tuple(
        replace(d, diffs=(), diff_truncated=d.diff_truncated or bool(d.diffs)) for d in report.drift))
    report = _note(report, f"the report was {before} bytes, over its cap of {max_bytes}: diffs were left out")
    if size_bytes(report) <= max_bytes:
        return report
    report = _note(_cut_messages(report, MIN_DIFF_CHARS), f"messages were cut to {MIN_DIFF_CHARS} characters")
    if size_bytes(report) <= max_bytes:
        return report
    total = len(report.drift)
    report = _note(report, "drift items were left out (count below)")
    report = _shrink_list(report, max_bytes, "drift", lambda r, n: replace(r, warnings=(
        *r.warnings[:-1], f"{total - n} of {total} drift items were left out"), drift=r.drift[:n]))
    if size_bytes(report) <= max_bytes:
        return report
    report = _shrink_list(report, max_bytes, "errors", lambda r, n: replace(r, errors=r.errors[:n]))
    return _shrink_list(report, max_bytes, "warnings", lambda r, n: replace(r, warnings=r.warnings[:n]))
