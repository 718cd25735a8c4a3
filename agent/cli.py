"""`gitops-agent`: the composition root. Parses arguments, builds the objects, maps errors to exit
codes, configures logging once, and is the only module that prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from agent import __version__, config, render
from agent import report as report_codec
from agent.cycle import Cycle, CycleOptions
from agent.errors import AgentError
from agent.report import Report, Trigger, exit_code
from agent.state import StateStore

log = logging.getLogger("agent")

EPILOG = """\
exit codes: 0 in sync or corrected, 2 drift left (detect mode, --check, paused), 1 failed or error.
configuration: --config, else $GITOPS_AGENT_CONFIG, else /etc/gitops-agent/agent.yaml. Settings:
""" + config.describe()


class _KeyValueFormatter(logging.Formatter):
    """For journald: no timestamp (journald adds one), level and logger as fields."""

    def format(self, record: logging.LogRecord) -> str:
        return f"level={record.levelname.lower()} logger={record.name} msg={record.getMessage()!r}"


def setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM") or not sys.stderr.isatty():
        handler.setFormatter(_KeyValueFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)


def _load(args: argparse.Namespace) -> config.AgentConfig:
    return config.load(config.config_path(args.config))


def _colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    report = Cycle(cfg).run(CycleOptions(trigger=Trigger.MANUAL, check_only=args.check))
    if args.json:
        print(report_codec.to_json(report, indent=2))
    else:
        print(render.summary(report, colour=_colour()))
    return exit_code(report.status)


def _last(args: argparse.Namespace) -> Report:
    cfg = _load(args)
    last = StateStore(cfg.state_dir).last_report()
    if last is None:
        raise AgentError(f"no run yet (no {cfg.state_dir / 'last_run.json'}); try: gitops-agent run")
    return last


def cmd_status(args: argparse.Namespace) -> int:
    last = _last(args)
    if args.json:
        print(json.dumps({"last_run": report_codec.to_dict(last)}, indent=2))
    else:
        print(render.status_text(last, datetime.now(UTC)))
        print(render.summary(last, colour=_colour()))
    return exit_code(last.status)


def cmd_diff(args: argparse.Namespace) -> int:
    last = _last(args)
    if not last.drift:
        print(f"no drift in the last run ({last.status.value}, commit {(last.source.commit or '-')[:12]})")
    for item in last.drift:
        print(render.unified(item, colour=_colour()))
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"gitops-agent {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gitops-agent", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Keep this host in the state its Git repository declares (Ansible playbooks per "
                    "inventory group), detect drift, correct it, and report every attempt.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH",
                        help="agent.yaml (default: $GITOPS_AGENT_CONFIG or /etc/gitops-agent/agent.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.set_defaults(func=func)
        return p

    run = add("run", cmd_run, "one cycle now: fetch, check for drift, apply in enforce mode, recheck, "
                              "report (exit 0 in sync/corrected, 2 drift left, 1 failed)")
    run.add_argument("--check", action="store_true", help="detect only, this run: never apply")
    run.add_argument("--json", action="store_true", help="print the report (schema v1) as JSON")
    status = add("status", cmd_status, "the last run: status, commit, drift count, pause")
    status.add_argument("--json", action="store_true", help="machine-readable")
    add("diff", cmd_diff, "the drift of the last run, task by task, as unified diffs")
    add("version", cmd_version, "print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        code: int = args.func(args)
    except AgentError as e:
        print(f"gitops-agent: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gitops-agent: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
