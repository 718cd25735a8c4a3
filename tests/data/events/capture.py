"""Capture a new data-driven case for tests/test_events.py from a real ansible-runner run.

    python tests/data/events/capture.py CASE PLAYBOOK [--check]

runs PLAYBOOK against localhost (connection local, target_root in a temp dir) through agent.runner,
and writes CASE/events.json (the raw events, minus noise) and CASE/expected.json (what agent.events
parses them into today). Read expected.json before committing it: it is the assertion.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout, when run as a script

from agent import events, runner
from agent.inventory import RunPlan
from tests.test_events import as_json

KEEP = ("event", "event_data", "stdout")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("playbook", type=Path)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    captured: dict[str, Any] = {}
    real_parse = events.parse

    def spy(evs: Any, **kw: Any) -> events.ParsedRun:
        captured["events"] = [{k: e.get(k) for k in KEEP} for e in evs]
        captured["notes"] = kw.get("notes") or {}
        return real_parse(captured["events"], **kw)

    events.parse = spy  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        inv = Path(tmp) / "hosts"
        inv.write_text("localhost\n")
        plan = RunPlan(host="localhost", commit="0" * 40, roles=(args.playbook.stem,),
                       playbooks=(args.playbook.resolve(),), inventory=inv, project_dir=Path(tmp))
        settings = runner.RunnerSettings(work_dir=Path(tmp) / "work", timeout_s=120,
                                         extra_vars={"target_root": f"{tmp}/root"})
        mode = runner.RunMode.CHECK if args.check else runner.RunMode.APPLY
        result = runner.run_playbooks(plan, mode, settings, cancel=lambda: False)
    text = json.dumps(captured["events"], indent=1).replace(tmp, "/TMP")
    case = Path(__file__).parent / args.case
    case.mkdir(exist_ok=True)
    (case / "events.json").write_text(text + "\n")
    (case / "notes.json").write_text(json.dumps(captured["notes"], indent=1) + "\n")
    parsed = events.parse(json.loads(text), host="localhost", notes=captured["notes"])
    (case / "expected.json").write_text(json.dumps(as_json(parsed), indent=1) + "\n")
    print(f"{case}: {len(result.parsed.tasks)} task results, status {result.status}", file=sys.stderr)


if __name__ == "__main__":
    main()
