"""The differential test's machinery: the same case repo run by plain `ansible-playbook` and by the agent,
both reduced to the same `Outcomes`, and compared field by field.

The plain run is what an operator would type in a checkout of the repo (cwd = the checkout, so its
ansible.cfg applies): `ansible-playbook [--check] --diff -i inventory --limit HOST -e target_root=ROOT
-c local playbooks/<role>.yml...` with the host's role playbooks in the agent's order, no terminal, and
none of the agent's settings. The only additions are a callback that records each task's outcome
(tests/semantics/ansible_plugins, on ANSIBLE_CALLBACK_PLUGINS) and a PATH whose first python3.11 is
this virtualenv's, which Ansible's interpreter discovery then picks.

Compared fields (the names docs/ansible-semantics.md lists under "Compared fields"):
    verdict              ok | failed: ansible-playbook's exit code against the agent's status
    stats.<key>          the recap: ok, changed, failed, skipped, unreachable, rescued, ignored
    changed_tasks        tasks that changed (check: would change); agent: drift that is not unverifiable
    unverifiable_tasks   tasks check mode skipped; agent: unverifiable drift
    failed_tasks         failures that count (not ignored, not rescued)
    changed_paths        paths the changed tasks manage; agent: the paths of their diffs
    failure_text         each counted failure's reason (per loop item) must appear in the agent's report
    apply.verdict        after a real apply (cases with `apply: true`)
    apply.final_state    the files left under target_root by each apply
    after_apply.<field>  the fields above, of a --check run right after each side's apply

A task is named as the report's drift items name it: its name, file:line (`task_path`) and loop item
(`item`, with the items of the looped includes it came from first), so twins are told apart. A failed
task is named by its name and loop item (the report's failure messages name no file).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.inventory import parse_graph, roles_for
from tests.semantics.cases import Case

ROOT = Path(__file__).resolve().parents[2]
CALLBACKS = Path(__file__).resolve().parent / "ansible_plugins" / "callback"
SEMANTICS_DOC = ROOT / "docs" / "ansible-semantics.md"
VENV_BIN = Path(sys.executable).parent
# A clean PATH: this machine's own PATH may hold interpreter shims that Ansible's discovery would pick.
PLAIN_PATH = f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ROOT_MARK = "<target_root>"
FIELDS = frozenset({"verdict", "changed_tasks", "unverifiable_tasks", "failed_tasks", "changed_paths",
                    "failure_text", "apply.verdict", "apply.final_state"})
STATS_FIELD = re.compile(r"stats\.[a-z_]+")
AFTER_APPLY = "after_apply."
CHANGED_KINDS = frozenset({"intentional", "corrective", "recurring"})
_AGENT_FAILED = re.compile(r"task '(?P<task>.*?)(?: \[(?P<item>.*)\])?' failed: (?P<message>.*)", re.DOTALL)
MAX_LABEL = 120  # loop labels are compared by their start: the agent bounds them


def known_field(name: str) -> bool:
    """Whether the differential test compares a field of this name (what docs may list)."""
    bare = name.removeprefix(AFTER_APPLY)
    return (bare in FIELDS or bool(STATS_FIELD.fullmatch(bare))) and not (
        name.startswith(AFTER_APPLY) and bare.startswith("apply."))


@dataclass(frozen=True)
class Difference:
    field: str
    plain: Any
    agent: Any

    def __str__(self) -> str:
        return f"{self.field}:\n      ansible-playbook: {self.plain}\n      gitops-agent:     {self.agent}"


@dataclass(frozen=True)
class Outcomes:
    """What one run says about the host, in terms both runs can give."""

    verdict: str  # ok | failed
    detail: str  # exit code / status, for messages
    stats: Mapping[str, int]
    changed_tasks: tuple[str, ...] = ()
    unverifiable_tasks: tuple[str, ...] = ()
    failed_tasks: tuple[str, ...] = ()
    changed_paths: tuple[str, ...] = ()
    failure_reasons: tuple[str, ...] = ()  # plain: each counted failure's reason; agent: its report text


def task_id(task: str, path: str | None = None, item: str | None = None) -> str:
    """A task as both sides can name it: name @ file:line (relative to the repo) @ item=loop item."""
    parts = [task, *([_repo_relative(path)] if path else []), *([f"item={item[:MAX_LABEL]}"] if item else [])]
    return " @ ".join(parts)


def _repo_relative(path: str) -> str:
    """A task path made comparable across checkouts: relative to the repo (releases/<sha>/ or checkout/)."""
    for marker in (re.compile(r".*/releases/[0-9a-f]{40}/"), re.compile(r".*/checkout/")):
        path = marker.sub("", path, count=1)
    return path


def _rooted(text: str, root: Path) -> str:
    return text.replace(str(root), ROOT_MARK)


# -- the plain run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlainRun:
    rc: int
    records: tuple[dict[str, Any], ...]
    output: str


def host_playbooks(case: Case, checkout: Path) -> list[str]:
    """The host's role playbooks, relative to the checkout, in the agent's order."""
    if case.playbooks:
        return [p if p.endswith((".yml", ".yaml")) else f"playbooks/{p}.yml" for p in case.playbooks]
    graph = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", "inventory", "--graph"], cwd=checkout,
                           capture_output=True, text=True, check=True, env=plain_env(checkout.parent))
    names = [p.stem for p in (checkout / "playbooks").glob("*.yml")]
    return [f"playbooks/{role}.yml" for role in roles_for(parse_graph(graph.stdout), case.host, names)]


def plain_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    return {**env, "PATH": PLAIN_PATH, "HOME": str(home), "ANSIBLE_NOCOLOR": "1"}


def plain_run(case: Case, checkout: Path, root: Path, *, check: bool, home: Path) -> PlainRun:
    """ansible-playbook from the checkout, as an operator would run it (no terminal)."""
    records_file = root.parent / f"{root.name}-outcomes.jsonl"
    records_file.unlink(missing_ok=True)
    argv = [str(VENV_BIN / "ansible-playbook"), *(["--check"] if check else []), "--diff", "-i", "inventory",
            "--limit", case.host, "-e", f"target_root={root}", "-c", "local", *host_playbooks(case, checkout)]
    env = {**plain_env(home), "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS), "TASK_OUTCOMES_FILE": str(records_file)}
    proc = subprocess.run(argv, cwd=checkout, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=240, check=False)
    lines = records_file.read_text(encoding="utf-8").splitlines() if records_file.exists() else []
    return PlainRun(proc.returncode, tuple(json.loads(line) for line in lines), proc.stdout + proc.stderr)


def _counted_failure(record: Mapping[str, Any]) -> bool:
    return record["outcome"] in ("failed", "unreachable") and not record["ignored"] and not record["rescued"]


def _reasons(record: Mapping[str, Any], root: Path) -> list[str]:
    failed_items = [i for i in record["items"] if i["outcome"] in ("failed", "unreachable") and i["msg"]]
    texts = [i["msg"] for i in failed_items] or [record["msg"] or ""]
    return [_rooted(t.strip().splitlines()[0][:150], root) for t in texts if t.strip()]


def _item(record: Mapping[str, Any], label: str | None = None) -> str | None:
    return " / ".join([*record["includes"], *([label] if label is not None else [])]) or None


def _named(record: Mapping[str, Any], chosen: list[dict[str, Any]], *, path: bool = True) -> list[str]:
    """The task's identities: one per chosen loop item if it looped, else the task's."""
    where = record["path"] if path else None
    if record["items"]:
        return [task_id(record["task"], where, _item(record, i["item"])) for i in chosen]
    return [task_id(record["task"], where, _item(record))]


def plain_outcomes(run: PlainRun, root: Path) -> Outcomes:
    tasks = [r for r in run.records if r["record"] == "task"]
    stats = next((r for r in reversed(run.records) if r["record"] == "stats"), {})
    changed: list[str] = []
    unverifiable: list[str] = []
    paths: list[str] = []
    for task in (t for t in tasks if not t["gather"]):
        # A loop's items are judged one by one (items may change even when another item fails).
        looped = bool(task["items"])
        items = [i for i in task["items"] if i["outcome"] == "changed"]
        if (bool(items) if looped else task["outcome"] == "changed"):
            changed.extend(_named(task, items))
            targets = [i["target"] for i in items] if task["items"] else [task["target"]]
            paths.extend(_rooted(t, root) for t in targets if t)
        blind = [i for i in task["items"] if i["check_mode_skip"]]
        if (bool(blind) if looped else task["check_mode_skip"]):
            unverifiable.extend(_named(task, blind))
    counted = [t for t in tasks if _counted_failure(t)]
    failed = [name for t in counted for name in _named(
        t, [i for i in t["items"] if i["outcome"] in ("failed", "unreachable")], path=False)]
    renamed = {"failures": "failed"}
    return Outcomes(
        verdict="ok" if run.rc == 0 else "failed", detail=f"exit {run.rc}",
        stats={renamed.get(k, k): int(v) for k, v in stats.items() if k not in ("record", "host")},
        changed_tasks=tuple(sorted(changed)), unverifiable_tasks=tuple(sorted(unverifiable)),
        failed_tasks=tuple(sorted(failed)), changed_paths=tuple(sorted(paths)),
        failure_reasons=tuple(reason for t in counted for reason in _reasons(t, root)),
    )


# -- the agent's run ------------------------------------------------------------------------------


def agent_config(case: Case, *, origin: Path, state: Path, root: Path) -> dict[str, Any]:
    """The agent as a site would run it: default strategy, fact gathering and mode; only paths are set."""
    return {"host": case.host, "source": {"url": str(origin)}, "state_dir": str(state),
            "extra_vars": {"target_root": str(root)}, "lock_wait": "0s", "schedule": {"timeout": "120s"}}


def agent_text(report: Mapping[str, Any]) -> str:
    """Everything the report says in words: errors, failed tasks, and the reasons of drift items."""
    apply = report.get("apply") or {}
    return "\n".join([*(str(e.get("message")) for e in report.get("errors") or ()),
                      *(f"{t.get('task')}: {t.get('message')}" for t in apply.get("failed_tasks") or ()),
                      *(str(d["reason"]) for d in report.get("drift") or () if d.get("reason"))])


def agent_outcomes(report: Mapping[str, Any], code: int, root: Path) -> Outcomes:
    drift = [d for d in report.get("drift") or () if isinstance(d, Mapping)]

    def name(item: Mapping[str, Any]) -> str:
        return task_id(str(item["task"]), item.get("task_path"), item.get("item"))

    changed = [d for d in drift if d.get("kind") in CHANGED_KINDS]
    failed = [task_id(m["task"], None, m["item"]) for e in report.get("errors") or ()
              if e.get("phase") == "check" and (m := _AGENT_FAILED.match(str(e.get("message") or "")))]
    paths = [_rooted(str(diff["path"]), root) for d in changed for diff in d.get("diffs") or ()
             if str(diff.get("path", "")).startswith("/")]
    status = str(report.get("status"))
    return Outcomes(
        verdict="failed" if status in ("failed", "error") else "ok",
        detail=f"exit {code}, status {status}, errors {[e.get('message') for e in report.get('errors') or ()]}",
        stats={k: int(v) for k, v in (report.get("stats") or {}).items()},
        changed_tasks=tuple(sorted(name(d) for d in changed)),
        unverifiable_tasks=tuple(sorted(name(d) for d in drift if d.get("kind") == "unverifiable")),
        failed_tasks=tuple(sorted(failed)),
        changed_paths=tuple(sorted(paths)),
        failure_reasons=(_rooted(agent_text(report), root),),
    )


def apply_verdict(report: Mapping[str, Any]) -> str:
    status = str(report.get("status"))
    return "ok" if status in ("in_sync", "corrected") else status


# -- comparing ------------------------------------------------------------------------------------


def compare(plain: Outcomes, agent: Outcomes, prefix: str = "") -> list[Difference]:
    """The fields in which two runs' outcomes differ (`prefix`: e.g. "after_apply.")."""
    diffs: list[Difference] = []
    if plain.verdict != agent.verdict:
        diffs.append(Difference(f"{prefix}verdict", f"{plain.verdict} ({plain.detail})",
                                f"{agent.verdict} ({agent.detail})"))
    for key in sorted(set(plain.stats) & set(agent.stats)):
        if plain.stats[key] != agent.stats[key]:
            diffs.append(Difference(f"{prefix}stats.{key}", plain.stats[key], agent.stats[key]))
    for name in ("changed_tasks", "unverifiable_tasks", "failed_tasks", "changed_paths"):
        mine, theirs = getattr(plain, name), getattr(agent, name)
        if Counter(mine) != Counter(theirs):
            diffs.append(Difference(f"{prefix}{name}", list(mine), list(theirs)))
    text = "\n".join(agent.failure_reasons)
    missing = [reason for reason in plain.failure_reasons if reason not in text]
    if missing:
        diffs.append(Difference(f"{prefix}failure_text", f"reasons {missing}", f"report text {text!r}"))
    return diffs


def tree(root: Path) -> dict[str, str]:
    """Every path under root -> its type, mode and content (or link target): what an apply left."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        mode = f"{stat.S_IMODE(info.st_mode):04o}"
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            found[rel] = f"link -> {_rooted(os.readlink(path), root)}"
        elif stat.S_ISDIR(info.st_mode):
            found[rel] = f"dir {mode}"
        else:
            found[rel] = f"file {mode} {_rooted(path.read_text(encoding='utf-8', errors='replace'), root)!r}"
    return found


def compare_trees(plain: Mapping[str, str], agent: Mapping[str, str]) -> list[Difference]:
    differing = sorted(p for p in set(plain) | set(agent) if plain.get(p) != agent.get(p))
    if not differing:
        return []
    return [Difference("apply.final_state", {p: plain.get(p, "absent") for p in differing},
                       {p: agent.get(p, "absent") for p in differing})]


# -- the deviations docs/ansible-semantics.md lists -----------------------------------------------


@dataclass(frozen=True)
class Deviation:
    id: str
    title: str
    fields: frozenset[str] = field(default_factory=frozenset)


def documented_deviations(text: str) -> dict[str, Deviation]:
    """`## D-<id>[: title]` sections and the backquoted names on their `Compared fields` line."""
    found: dict[str, Deviation] = {}
    for section in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = section.partition("\n")
        ident, _, title = heading.partition(":")
        if not ident.startswith("D-"):
            continue
        line = next((ln for ln in body.splitlines() if "Compared fields" in ln), "")
        found[ident.strip()] = Deviation(ident.strip(), title.strip(), frozenset(re.findall(r"`([^`]+)`", line)))
    return found


def judge(case: Case, differences: Iterable[Difference], documented: Mapping[str, Deviation]) -> list[str]:
    """Problems with a case's result: a difference no listed deviation covers, a listed deviation that is
    not documented, and a listed deviation that did not show (the list must stay true)."""
    listed = [f"D-{d.removeprefix('D-')}" for d in case.deviations]
    problems = [f"case.yml lists {d}, which docs/ansible-semantics.md does not document"
                for d in listed if d not in documented]
    allowed = {f for d in listed if d in documented for f in documented[d].fields}
    seen = set()
    for diff in differences:
        if diff.field in allowed:
            seen.add(diff.field)
        else:
            problems.append(f"deviation not listed: {diff}")
    for ident in listed:
        if ident in documented and not documented[ident].fields & seen:
            problems.append(f"case.yml lists {ident}, but the runs did not differ in "
                            f"{sorted(documented[ident].fields) or 'any compared field'}: remove it, or the "
                            "agent changed")
    return problems
