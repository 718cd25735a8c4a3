"""Capture a new data-driven case for tests/test_events.py from a real ansible-runner run.

    python tests/data/events/capture.py CASE PLAYBOOK [--check]
    python tests/data/events/capture.py CASE --semantics NAME [--check] [--max-event-res N]
                                             [--strategy mitogen]

runs PLAYBOOK against localhost (connection local, target_root in a temp dir) through agent.runner, or
the playbooks of the config-repo case tests/semantics/cases/NAME as its host (a copy of its repo/ is the
project directory, so task paths are relative to it), and writes CASE/events.json (the raw events, minus
noise; the temp dir becomes /TMP, this checkout /CHECKOUT), CASE/notes.json (the gitops_agent callback's
notes), CASE/meta.json (host, project directory) and CASE/expected.json (what agent.events parses them
into today). Read expected.json before committing it:
it is the assertion. `--max-event-res` lowers ansible-runner's event size limit (MAX_EVENT_RES) so a
small run shows what a large one does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout, when run as a script

from agent import events, runner
from agent.inventory import RunPlan
from tests.semantics.cases import load
from tests.test_events import as_json

KEEP = ("event", "event_data", "stdout")
CHECKOUT = Path(__file__).resolve().parents[3]


def _plan(args: argparse.Namespace, tmp: str) -> RunPlan:
    if args.semantics:
        case = load(args.semantics)
        project = Path(tmp) / "repo"
        shutil.copytree(case.repo, project)
        return RunPlan(host=case.host, commit="0" * 40, roles=case.playbooks,
                       playbooks=tuple(project / "playbooks" / f"{r}.yml" for r in case.playbooks),
                       inventory=project / "inventory", project_dir=project)
    inv = Path(tmp) / "hosts"
    inv.write_text("localhost\n")
    return RunPlan(host="localhost", commit="0" * 40, roles=(args.playbook.stem,),
                   playbooks=(args.playbook.resolve(),), inventory=inv, project_dir=Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("playbook", type=Path, nargs="?")
    parser.add_argument("--semantics", metavar="NAME")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--max-event-res", type=int)
    parser.add_argument("--strategy", default="linear")
    args = parser.parse_args()
    if bool(args.playbook) == bool(args.semantics):
        parser.error("give either PLAYBOOK or --semantics NAME")
    captured: dict[str, Any] = {}
    real_parse = events.parse

    def spy(evs: Any, **kw: Any) -> events.ParsedRun:
        captured["events"] = [{k: e.get(k) for k in KEEP} for e in evs]
        captured["notes"] = kw.get("notes") or {}
        return real_parse(captured["events"], **kw)

    events.parse = spy  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        plan = _plan(args, tmp)
        env = {} if args.max_event_res is None else {"MAX_EVENT_RES": str(args.max_event_res)}
        settings = runner.RunnerSettings(work_dir=Path(tmp) / "work", timeout_s=300, env=env,
                                         extra_vars={"target_root": f"{tmp}/root"}, strategy=args.strategy)
        mode = runner.RunMode.CHECK if args.check else runner.RunMode.APPLY
        result = runner.run_playbooks(plan, mode, settings, cancel=lambda: False)
        project_dir = str(plan.project_dir).replace(tmp, "/TMP")
    text = json.dumps(captured["events"], indent=1).replace(tmp, "/TMP")
    text = text.replace(str(CHECKOUT), "/CHECKOUT")
    case = Path(__file__).parent / args.case
    case.mkdir(exist_ok=True)
    (case / "events.json").write_text(text + "\n")
    (case / "notes.json").write_text(json.dumps(captured["notes"], indent=1).replace(tmp, "/TMP") + "\n")
    meta = {"host": plan.host, "project_dir": project_dir}
    (case / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    parsed = events.parse(json.loads(text), host=plan.host, notes=json.loads((case / "notes.json").read_text()),
                          project_dir=project_dir)
    (case / "expected.json").write_text(json.dumps(as_json(parsed), indent=1) + "\n")
    print(f"{case}: {len(result.parsed.tasks)} task results, status {result.status}", file=sys.stderr)


if __name__ == "__main__":
    main()
