"""`gitops-collector drift list|ack|accept|revoke|export`: the drift review from a terminal, on the
collector's database (`--db`, like `token` and `prune`), through the same store functions as the API and
the web UI (review_store, review_views.build_exception, evidence), so the rules and refusals are the same.

Identity: the Unix user running the command; the audit log records `cli:USER` (actor kind `cli`). Who may:
whoever may open the collector's database, the same people who create tokens. `drift` without an action
stays the HTTP query of fleet_cli (reader token).

Every refusal is one line on stderr: exit 2 for bad usage (argparse), 1 for a refused action (a missing
reason, an expiry in the past, a resolved item...), 66 for an unknown item, host or role, 78 for a bad key.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent.collector.errors import CollectorError, NotFoundError
from agent.collector.terminal import printable as _p  # reports are untrusted: control characters escaped

if TYPE_CHECKING:  # the actions import what they use when they run: `--help` stays light (cli.py)
    from sqlalchemy import Engine

    from agent.collector import evidence
    from agent.collector.review_store import Actor

STATES = ("open", "acknowledged", "accepted", "resolved", "current")
FORMATS = ("jsonl", "csv")  # evidence.FORMATS, written out for the parser (test_cli_imports.py)
DEST = "drift_action"


class DriftCliError(CollectorError):
    """A refused terminal command, with the process exit code (sysexits.h) to leave with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_actions(drift: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """The actions under the `drift` command (optional: `drift` alone is fleet_cli's HTTP query)."""
    actions = drift.add_subparsers(dest=DEST, metavar="{list,ack,accept,revoke,export}",
                                   help="optional: an action on the database (--db, actor cli:USER); "
                                        "without one, current drift from the API")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing = actions.add_parser("list", parents=[common, out], help="drift items and their state")
    listing.add_argument("--state", choices=STATES, default="current",
                         help="current (open, acknowledged or accepted; the default) or one state")
    listing.add_argument("--host", help="only this host")
    listing.add_argument("--role", help="only this role (playbook)")
    listing.add_argument("--task", help="only this task")
    listing.add_argument("--limit", type=_count, default=100, metavar="N", help="at most N (default 100)")
    ack = actions.add_parser("ack", parents=[common, out], help="acknowledge a drift item (or --undo)")
    ack.add_argument("item_id", type=_count, metavar="ITEM_ID")
    ack.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    ack.add_argument("--undo", action="store_true", help="withdraw the acknowledgement (back to open)")
    accept = actions.add_parser("accept", parents=[common, out],
                                help="accept drift until a date: an exception (changes what counts and "
                                     "alerts, never what hosts apply)")
    accept.add_argument("item_id", type=_count, nargs="?", metavar="ITEM_ID",
                        help="the item it starts from (scope item or task)")
    accept.add_argument("--scope", choices=["item", "task", "role"], default="item")
    accept.add_argument("--owner", required=True, help="who answers for the exception")
    accept.add_argument("--reason", required=True, help="why the drift is accepted")
    accept.add_argument("--ticket", required=True, help="a ticket id or URL")
    accept.add_argument("--expires", required=True, metavar="DATE",
                        help="YYYY-MM-DD (00:00 UTC that day) or an RFC 3339 time, at most 365 days ahead")
    accept.add_argument("--host-pattern", metavar="GLOB", help="scope task or role: hosts matching GLOB")
    accept.add_argument("--host-group", metavar="GROUP", help="scope task or role: hosts of GROUP")
    accept.add_argument("--role", help="scope role: the role it covers")
    accept.add_argument("--role-kind", choices=["ansible", "playbook"], default="ansible")
    accept.add_argument("--same-loop-item", action="store_true", help="scope task: only this loop item")
    revoke = actions.add_parser("revoke", parents=[common, out],
                                help="revoke an exception: the items it accepted reopen")
    revoke.add_argument("exception_id", type=_count, metavar="EXCEPTION_ID")
    revoke.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    export = actions.add_parser("export", parents=[common, out],
                                help="write an evidence bundle (ZIP) for auditors")
    export.add_argument("--from", dest="start", required=True, metavar="WHEN", help="YYYY-MM-DD or RFC 3339")
    export.add_argument("--to", dest="end", metavar="WHEN", help="end, excluded (default now)")
    export.add_argument("--scope", default="fleet", help="fleet (default), role:NAME or host:NAME")
    export.add_argument("--format", choices=FORMATS, default="jsonl")
    export.add_argument("--key", type=Path, metavar="FILE",
                        help="sign with this OpenSSH private key (SHA256SUMS.sig in the bundle)")
    export.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="the bundle to write (refused if it exists); - for stdout")


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def utc_now() -> datetime:
    """Now, in UTC: the clock of context.utc_now, not imported from there because agent.collector.context
    loads the server's parts (Starlette, anyio), which `drift list`, `ack` and `revoke` have no use for."""
    return datetime.now(UTC)


def actor() -> Actor:
    """`cli:USER`, the Unix user running the command (its effective uid)."""
    from agent.collector.review_store import Actor

    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = str(os.geteuid())
    return Actor(f"cli:{name}", "cli")


def run(engine: Engine, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run one drift action on `engine`. Raises CollectorError subclasses (one line) when refused."""
    out = out or sys.stdout
    action = getattr(args, DEST)
    try:
        result = ACTIONS[action](engine, args, out)
    except DriftCliError:
        raise
    except NotFoundError as e:
        raise DriftCliError(as_options(str(e)), 66) from e
    except CollectorError as e:
        raise DriftCliError(as_options(str(e))) from e
    if result is None:
        return 0
    if args.json:
        json.dump(result[0], out, indent=2)
        out.write("\n")
    else:
        out.write(result[1])
    return 0


Result = tuple[Any, str] | None

# The API's field names that this command takes under another name (the others: --NAME, _ as -).
OPTIONS = {"expires_at": "--expires", "item_id": "ITEM_ID", "hosts": "--host-pattern/--host-group",
           "from": "--from", "to": "--to", "host_pattern": "--host-pattern", "host_group": "--host-group",
           "role_kind": "--role-kind", "scope": "--scope", "owner": "--owner", "reason": "--reason",
           "ticket": "--ticket", "role": "--role", "format": "--format"}


def as_options(message: str) -> str:
    """A refusal that names API fields (`expires_at: must be in the future`, from review_views and
    evidence) named by this command's options instead (`--expires: must be in the future`)."""
    names, sep, rest = message.partition(": ")
    parts = names.split("/")
    if not sep or not all(p in OPTIONS for p in parts):
        return message
    return "/".join(OPTIONS[p] for p in parts) + sep + rest


def _list(engine: Engine, args: argparse.Namespace, out: TextIO) -> Result:
    from sqlalchemy import func, select

    from agent.collector import review_store
    from agent.collector.queries import effective_state
    from agent.collector.tables import review_items

    now = utc_now()
    state_now = effective_state(now).label("state_now")
    query = select(review_items, state_now)
    # current: IS_CURRENT too, which seeks a host's current items past its resolved history
    if args.state == "current":
        query = query.where(review_items.c.resolved_at.is_(None), review_store.IS_CURRENT)
    elif args.state == "resolved":
        query = query.where(review_items.c.resolved_at.is_not(None))
    else:
        query = query.where(review_items.c.resolved_at.is_(None), review_store.IS_CURRENT,
                            state_now == args.state)
    for name in ("host", "role", "task"):
        if getattr(args, name):
            query = query.where(review_items.c[name] == getattr(args, name))
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
        rows = conn.execute(query.order_by(review_items.c.first_seen_at, review_items.c.id)
                            .limit(args.limit)).all()
    items = [review_store.item_dict(r, now) for r in rows]
    lines = [f"{'ID':>6}  {'STATE':<12}  {'AGE':>6}  {'HOST':<28}  {'ROLE':<14}  TASK\n"]
    for i in items:
        age = _age(i["age_s"])
        lines.append(f"{i['id']:>6}  {i['state']:<12}  {age:>6}  {_p(i['host']):<28}  {_p(i['role']):<14}  "
                     f"{_p(i['task'])}\n")
    lines.append(f"{len(items)} of {total} item(s)\n")
    return {"items": items, "total": total}, "".join(lines)


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _ack(engine: Engine, args: argparse.Namespace, out: TextIO) -> Result:
    from agent.collector import review_store

    now = utc_now()
    call = review_store.unacknowledge_item if args.undo else review_store.acknowledge
    call(engine, args.item_id, actor=actor(), reason=args.reason, now=now)
    item = review_store.item_json(engine, args.item_id, now=now)
    return item, f"drift item {item['id']} ({_p(item['host'])}: {_p(item['task'])}) is {item['state']}\n"


def _accept(engine: Engine, args: argparse.Namespace, out: TextIO) -> Result:
    from agent.collector import review_store
    from agent.collector.review_views import build_exception
    from agent.report import format_time

    now = utc_now()
    fields = {"scope": args.scope, "owner": args.owner, "reason": args.reason, "ticket": args.ticket,
              "expires_at": args.expires, "host_pattern": args.host_pattern, "host_group": args.host_group,
              "role": args.role, "role_kind": args.role_kind, "same_loop_item": args.same_loop_item}
    ref = review_store.load_item(engine, args.item_id) if args.item_id is not None else None
    exc_id = review_store.create_exception(engine, build_exception(fields, ref), actor=actor(), now=now)
    row = review_store.exception_row(engine, exc_id)
    covered = _covered(engine, exc_id)
    body = {"id": exc_id, "scope": row.scope, "scope_fields": json.loads(row.scope_fields),
            "host_pattern": row.host_pattern, "host_group": row.host_group, "owner": row.owner,
            "reason": row.reason, "ticket": row.ticket, "created_at": format_time(row.created_at),
            "created_by": row.created_by, "expires_at": format_time(row.expires_at), "items_covered": covered}
    return body, (f"exception {exc_id} ({row.scope}) accepted until {format_time(row.expires_at)}; "
                  f"covers {covered} current item(s) now\n")


def _revoke(engine: Engine, args: argparse.Namespace, out: TextIO) -> Result:
    from agent.collector import review_store
    from agent.report import format_time

    review_store.revoke_exception(engine, args.exception_id, actor=actor(), reason=args.reason, now=utc_now())
    row = review_store.exception_row(engine, args.exception_id)
    body = {"id": row.id, "scope": row.scope, "scope_fields": json.loads(row.scope_fields),
            "owner": row.owner, "reason": row.reason, "ticket": row.ticket,
            "expires_at": format_time(row.expires_at), "revoked_at": format_time(row.revoked_at),
            "revoked_by": row.revoked_by}
    return body, f"exception {row.id} ({row.scope}) revoked; the items it accepted are open again\n"


def _covered(engine: Engine, exc_id: int) -> int:
    from sqlalchemy import func, select

    from agent.collector.review_store import IS_CURRENT
    from agent.collector.tables import review_items

    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(review_items.c.accepted_by == exc_id, IS_CURRENT,
                                                           review_items.c.resolved_at.is_(None))).scalar_one())


def _export(engine: Engine, args: argparse.Namespace, out: TextIO) -> Result:
    from agent.collector import evidence

    try:
        key = evidence.load_key(args.key) if args.key is not None else None
    except CollectorError as e:
        raise DriftCliError(str(e), 78) from e
    req = evidence.parse_request(args.start, args.end, args.scope, now=utc_now())
    evidence.check_scope(engine, req.scope)
    counts = write_bundle(engine, req, args.format, key, args.out)
    body = {"path": str(args.out), "format": args.format, "signed": key is not None,
            "header": evidence.header(req), "size_bytes": counts}
    if str(args.out) == "-":
        return None
    signed = "signed" if key else "unsigned"
    return body, f"wrote {args.out} ({counts} bytes, {signed}, scope {req.scope})\n"


def write_bundle(engine: Engine, req: evidence.Export, fmt: str, key: evidence.SigningKey | None,
                 path: Path) -> int:
    """Stream the bundle into `path` (created, never overwritten; removed again if the export fails) or
    stdout for `-`. Returns the bytes written."""
    from agent.collector import evidence

    if str(path) == "-":
        size = 0
        for chunk in evidence.bundle_chunks(engine, req, fmt, key):
            sys.stdout.buffer.write(chunk)
            size += len(chunk)
        sys.stdout.buffer.flush()
        return size
    try:
        target = path.open("xb")
    except OSError as e:
        raise DriftCliError(f"--out {path}: cannot create it ({e.strerror})", 73) from e
    size = 0
    try:
        with target:
            for chunk in evidence.bundle_chunks(engine, req, fmt, key):
                target.write(chunk)
                size += len(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return size


ACTIONS = {"list": _list, "ack": _ack, "accept": _accept, "revoke": _revoke, "export": _export}


def is_action(args: argparse.Namespace) -> bool:
    return args.command == "drift" and getattr(args, DEST, None) is not None


__all__: Sequence[str] = ["DriftCliError", "actor", "add_actions", "is_action", "run", "write_bundle"]
