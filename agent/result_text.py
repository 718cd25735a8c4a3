"""Pure: the texts inside one Ansible task result -> the agent's bounded forms of them.

Diff shapes differ by module (copy/template: a list of {before, after, *_header}; lineinfile: one such
dict; file: before/after state dicts; package modules: {prepared: text}). They are normalised into
`Diff(path, before, after)` with string values, bounded in size. Messages become one bounded line with
encoded payloads (mitogen's bootstrap, base64 blobs) left out; loop items become their label.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from agent.report import Diff

MAX_DIFF_CHARS = 64 * 1024
MAX_MESSAGE_CHARS = 1000
MAX_ITEM_CHARS = 200
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Encoded payloads (mitogen's bootstrap, base64 module payloads): long runs of base64 characters.
_BLOB = re.compile(r"[A-Za-z0-9+/]{120,}={0,2}")
# A Python bootstrap passed inline (`python -c "import ...;exec(...)"`, as mitogen starts its children).
_BOOTSTRAP = re.compile(r"""(["'])import [^"']*exec\([^"']*\1""")


def _bound(text: str) -> str:
    if len(text) <= MAX_DIFF_CHARS:
        return text
    return text[:MAX_DIFF_CHARS] + f"\n[... {len(text) - MAX_DIFF_CHARS} more characters not kept]"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _bound(value)
    if isinstance(value, Mapping):
        return _bound("".join(f"{k}: {json.dumps(v)}\n" for k, v in sorted(value.items())))
    return _bound(json.dumps(value, sort_keys=True, default=str))


def _header_path(header: Any) -> str | None:
    if not isinstance(header, str) or not header:
        return None
    return header.removesuffix(" (content)").removesuffix(" (file attributes)")


def _one_diff(raw: Mapping[str, Any], fallback_path: str, target: str | None) -> Diff | None:
    if "prepared" in raw:
        return Diff(path=target or fallback_path, before=None, after=_text(raw["prepared"]))
    before, after = raw.get("before"), raw.get("after")
    if before is None and after is None:
        return None
    # copy/template put the *source* file in after_header: the managed path is dest/before_header.
    path = target or _header_path(raw.get("before_header")) or _header_path(raw.get("after_header"))
    if path is None:
        for side in (after, before):
            if isinstance(side, Mapping) and isinstance(side.get("path"), str):
                path = side["path"]
                break
    return Diff(path=path or fallback_path, before=_text(before), after=_text(after))


def normalise_diffs(raw: Any, fallback_path: str, target: str | None = None) -> tuple[Diff, ...]:
    """Any module's `diff` value -> Diff records (empty when there is nothing to show).

    `target` is the path the module manages, when its result names one (dest or path)."""
    items = raw if isinstance(raw, list) else [raw]
    diffs = [_one_diff(item, fallback_path, target) for item in items if isinstance(item, Mapping)]
    return tuple(d for d in diffs if d is not None and d.before != d.after)


def target(res: Mapping[str, Any]) -> str | None:
    """The path a module manages: its result's dest or path, else its arguments' (a template or copy
    that creates a file reports no dest in check mode, and its diff names the controller's temporary
    copy of the template)."""
    invocation = res.get("invocation")
    args = invocation.get("module_args") if isinstance(invocation, Mapping) else None
    for source in (res, args if isinstance(args, Mapping) else {}):
        for key in ("dest", "path"):
            value = source.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def clean_message(text: str) -> str:
    """One bounded line: ANSI colours, encoded payloads (such as mitogen's base64 bootstrap) and blank
    lines dropped, lines joined with ' | '."""
    text = _BOOTSTRAP.sub(r"\1[bootstrap code]\1", _ANSI.sub("", text))
    text = _BLOB.sub(lambda m: f"[{len(m.group())} characters of encoded data]", text)
    line = " | ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= MAX_MESSAGE_CHARS else line[:MAX_MESSAGE_CHARS - 1] + "…"


def result_message(res: Mapping[str, Any]) -> str | None:
    found = None
    for key in ("msg", "stderr", "reason", "exception"):
        value = res.get(key)
        if isinstance(value, str) and value.strip():
            found = value
            break
    stderr = res.get("stderr")
    if found is not None and found != stderr and isinstance(stderr, str) and stderr.strip():
        found = f"{found}: {stderr.strip()}"  # a command's "non-zero return code": what it said
    if found is not None and found.startswith("MODULE FAILURE"):
        for key in ("module_stderr", "module_stdout"):  # where the module's own words are
            detail = res.get(key)
            if isinstance(detail, str) and detail.strip():
                found = f"MODULE FAILURE: {detail.strip().splitlines()[-1]}"
                break
    return clean_message(found) if found is not None else None


def item_label(res: Mapping[str, Any]) -> str | None:
    """A loop item's label as Ansible shows it (loop_control.label, else the item itself)."""
    if "_ansible_item_label" in res:
        value = res["_ansible_item_label"]
    else:
        loop_var = str(res.get("ansible_loop_var") or "item")
        if loop_var not in res:
            return None
        value = res[loop_var]
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_ITEM_CHARS else text[:MAX_ITEM_CHARS - 1] + "…"
