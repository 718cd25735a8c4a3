"""`gitops-collector enrol list | approve | deny`: decide hosts' enrolment requests on the database
directly (agent.collector.enrolment), like `token create`. Whoever runs it can create tokens anyway, so
the decision is stored as by `cli:USER` (the login name, or --by), with the required --reason.

Exit codes: 0 done; 1 some selected requests were left pending (the reason is printed for each), or a
refusal (no such request, no selection, no reason); 66 no such database."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # run() imports what it uses: `--help` stays light (cli.py)
    from sqlalchemy import Engine

    from agent.collector import enrolment


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    enrol = sub.add_parser("enrol", help="hosts' enrolment requests: list, approve, deny (docs/collector.md)")
    actions = enrol.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[common], help="pending requests (--all: every request)")
    listing.add_argument("--all", action="store_true", help="approved, denied and collected ones too")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    for name, text in (("approve", "approve pending requests: the hosts then collect their tokens"),
                       ("deny", "deny pending (or approved, not yet collected) requests")):
        decide = actions.add_parser(name, parents=[common], help=text)
        decide.add_argument("ids", nargs="*", metavar="ID", help="request ids (from enrol list)")
        decide.add_argument("--pattern", metavar="GLOB",
                            help="every pending request whose host matches GLOB (fnmatch, e.g. "
                                 "web*.example.com)")
        decide.add_argument("--group", metavar="NAME",
                            help="every pending request that names inventory group NAME")
        decide.add_argument("--reason", required=True, help="why (stored with the decision)")
        decide.add_argument("--by", default=None, metavar="NAME", help="who decides (default: cli:LOGIN)")
        if name == "approve":
            decide.add_argument("--existing", action="store_true",
                                help="with ids: approve even though the host name already has a token or "
                                     "reports (a reinstalled host; never by pattern or group)")


def _table(rows: list[enrolment.Enrolment]) -> None:
    from agent.collector.enrolment import EnrolState

    print(f"{'ID':<16}  {'HOST':<30}  {'STATE':<9}  {'AUTH':<11}  {'ADDRESS':<15}  {'REQUESTED':<16}  NOTE")
    for r in rows:
        note = "EXISTING HOST " if r.existing and r.state is EnrolState.PENDING else ""
        if r.groups:
            note += "groups=" + ",".join(r.groups)
        if r.decided_by:
            note += f" by {r.decided_by}: {r.reason}"
        print(f"{r.id:<16}  {r.host:<30}  {r.state.value:<9}  {r.auth.value:<11}  {r.address:<15}  "
              f"{r.requested_at:%Y-%m-%d %H:%M}  {note.strip()}")


def run(engine: Engine, args: argparse.Namespace) -> int:
    from agent.collector import enrolment
    from agent.collector.enrolment import EnrolState, Selection

    if args.action == "list":
        rows = enrolment.list_requests(engine, () if args.all else (EnrolState.PENDING,))
        if args.json:
            print(json.dumps([r.as_json() for r in rows], indent=2))
        else:
            _table(rows)
        return 0
    from agent.collector.context import utc_now  # not for `list`: context loads the server's parts

    selection = Selection(tuple(args.ids), args.pattern, args.group)
    actor = args.by or f"cli:{getpass.getuser()}"
    decision = enrolment.decide(engine, selection, approve=args.action == "approve", actor=actor,
                                reason=args.reason, now=utc_now(),
                                allow_existing=getattr(args, "existing", False))
    for item in decision.decided:
        print(f"{item.state.value} {item.id} {item.host}")
    for item, why in decision.skipped:
        print(f"left pending {item.id} {item.host}: {why}", file=sys.stderr)
    if not decision.decided and not decision.skipped:
        print("no pending request matches", file=sys.stderr)
    return 1 if decision.skipped else 0
