"""`gitops-collector hosts|host|drift|runs|run|commits|commit`: the fleet from a terminal, read from a
collector's query API with a reader token (agent.collector.client). Part of the collector's CLI: tables
on a terminal, the API's JSON when the output is not a terminal or with --json.

Exit codes (sysexits.h): 0 done; 1 the collector answered an error (e.g. a bad filter); 2 bad usage;
66 the host, run or commit is not known; 69 the collector cannot be reached or is unavailable; 77 it
refused the token; 78 a bad URL, token file or CA file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from agent.collector import terminal
from agent.collector.client import (
    CA_FILE_ENV,
    DEFAULT_URL,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    URL_ENV,
    FleetClient,
    find_token,
    segment,
)

# queries.SEVERITY and the keys of queries.HOST_SORTS, written out so that the parser needs no SQLAlchemy
# (`--help` stays light, cli.py); tests/collector/test_cli_imports.py checks that they stay equal.
SEVERITY = ("failed", "error", "drifted", "paused", "corrected", "in_sync")
HOST_SORTS = ("host", "last_seen", "status", "drift", "commit")
COMMANDS = ("hosts", "host", "drift", "runs", "run", "commits", "commit")
COLOURS = {"failed": "31", "error": "35", "drifted": "33", "paused": "90", "corrected": "36", "in_sync": "32",
           "stale": "35"}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The query commands, each with --url, --token-file, --ca-file, --json and --table."""
    reader = argparse.ArgumentParser(add_help=False)
    where = reader.add_argument_group("collector")
    where.add_argument("--url", default=os.environ.get(URL_ENV, DEFAULT_URL),
                       help=f"collector URL (env {URL_ENV}; default {DEFAULT_URL})")
    where.add_argument("--token-file", metavar="FILE",
                       help=f"file holding a reader token, mode 0600 (env {TOKEN_FILE_ENV}; or the token in "
                            f"{TOKEN_ENV}; default ~/.config/gitops-collector/token)")
    where.add_argument("--ca-file", metavar="FILE", default=os.environ.get(CA_FILE_ENV),
                       help=f"extra CA bundle for an https URL (env {CA_FILE_ENV})")
    output = reader.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the API's JSON (default when not a TTY)")
    output.add_argument("--table", action="store_true", help="print a table (default on a TTY)")
    limit, few = _limit(100), _limit(20)

    hosts = sub.add_parser("hosts", parents=[reader, limit], help="hosts and their state (query API)")
    hosts.add_argument("--status", action="append", choices=[*SEVERITY], help="only these (repeatable)")
    hosts.add_argument("--role", help="hosts having this role")
    hosts.add_argument("--commit", metavar="SHA", help="hosts whose current commit starts with SHA")
    hosts.add_argument("--stale", action="store_true", help="only hosts that stopped reporting")
    hosts.add_argument("-q", "--search", metavar="TEXT", help="host name contains TEXT")
    hosts.add_argument("--sort", choices=list(HOST_SORTS), default="status",
                       help="sort key (default status: most severe first)")
    hosts.add_argument("--reverse", action="store_true", help="reverse the order")
    host = sub.add_parser("host", parents=[reader], help="one host: state, commit, current drift")
    host.add_argument("name", metavar="HOST")
    drift = sub.add_parser("drift", parents=[reader, limit], help="current drift by task (or --by-host)")
    drift.add_argument("--by-host", action="store_true", help="one row per host and task")
    for name in ("task", "role", "host"):
        drift.add_argument(f"--{name}", help=f"only this {name}")
    drift.add_argument("--kind", choices=["intentional", "corrective", "recurring", "unverifiable"])
    runs = sub.add_parser("runs", parents=[reader, few], help="runs, newest first (all hosts, or --host)")
    runs.add_argument("--host", help="only this host's runs")
    runs.add_argument("--status", action="append", choices=[*SEVERITY], help="only these (repeatable)")
    run = sub.add_parser("run", parents=[reader], help="one run: phases, errors, drift")
    run.add_argument("run_id", metavar="RUN_ID")
    sub.add_parser("commits", parents=[reader, limit], help="commits hosts reported, newest first")
    commit = sub.add_parser("commit", parents=[reader, limit], help="rollout of one commit")
    commit.add_argument("sha", metavar="SHA", help="a commit id or a unique prefix (4+ digits)")
    commit.add_argument("--not-reached", action="store_true", help="list the hosts not running it yet")


def _limit(default: int) -> argparse.ArgumentParser:
    """A parent parser with --limit. One per default: a parent's actions are shared by every parser made
    from it, so a `set_defaults` on one of them would change the default of all."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--limit", type=_count, default=default, metavar="N",
                        help=f"at most N rows (default {default}; 0: all)")
    return parent


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of rows (0 or more)")
    return int(text)


def run_query(args: argparse.Namespace, *, out: TextIO | None = None,
              environ: dict[str, str] | None = None) -> int:
    """Run one query command; raises client.ClientError (one line, with its exit code) on failure."""
    out = out or sys.stdout
    token = find_token(args.token_file, dict(os.environ if environ is None else environ))
    as_json = args.json or (not args.table and not out.isatty())
    colour = out.isatty() and not os.environ.get("NO_COLOR") and not as_json
    with FleetClient(args.url, token, ca_file=args.ca_file) as client:
        body, show = QUERIES[args.command](client, args)
    if as_json:
        json.dump(body, out, indent=2)
        out.write("\n")
    else:
        lines = show(printable(body), Style(colour, datetime.now(UTC)))
        out.write("".join(f"{line}\n" for line in lines))
    return 0


def printable(value: Any) -> Any:
    """`value` (the API's JSON) with every string's control characters escaped (\\x1b, \\n...): what
    reports hold is untrusted, and a terminal would obey the escape sequences in a host or task name."""
    if isinstance(value, str):
        return terminal.printable(value)
    if isinstance(value, list):
        return [printable(v) for v in value]
    if isinstance(value, dict):
        return {k: printable(v) for k, v in value.items()}
    return value


class Style:
    def __init__(self, colour: bool, now: datetime) -> None:
        self.colour, self.now = colour, now

    def status(self, status: str | None, *, stale: bool = False) -> str:
        text = (status or "-").replace("_", " ") + (" (stale)" if stale else "")
        code = COLOURS.get("stale" if stale else status or "")
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def when(self, value: str | None) -> str:
        from agent.collector.ui_render import ago

        return ago(value, self.now) if value else "-"


Show = Callable[[Any, Style], list[str]]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Left-aligned columns two spaces apart (ANSI colour codes do not count towards widths)."""
    cells = [[str(v) for v in row] for row in [headers, *rows]]
    widths = [max(_width(r[i]) for r in cells) for i in range(len(headers))]
    return ["  ".join(c + " " * (w - _width(c)) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in cells]


def _width(text: str) -> int:
    while "\x1b[" in text:
        start = text.index("\x1b[")
        text = text[:start] + text[text.index("m", start) + 1:]
    return len(text)


def _more(shown: int, total: int, what: str) -> list[str]:
    return [f"{shown} of {total} {what} (--limit N for more, 0 for all)"] if total > shown else []


def _listing(first: dict[str, Any], items: list[Any], *keep: str) -> dict[str, Any]:
    return {**{k: first[k] for k in keep if k in first}, "items": items, "total": first["total"]}


def q_hosts(client: FleetClient, args: argparse.Namespace) -> tuple[Any, Show]:
    first, items = client.pages("hosts", args.limit, status=",".join(args.status or []) or None,
                                role=args.role, commit=args.commit, stale="true" if args.stale else None,
                                q=args.search, sort=args.sort, order="desc" if args.reverse else "asc")

    def show(body: dict[str, Any], s: Style) -> list[str]:
        rows = [(h["host"], s.status(h["status"], stale=h["stale"]), (h["commit"] or "-")[:10],
                 h["drift_count"], s.when(h["last_seen_at"]), ",".join(h.get("roles", [])))
                for h in body["items"]]
        counts = body["counts"]
        summary = ", ".join(f"{s.status(k)} {counts[k]}" for k in SEVERITY if counts.get(k))
        return [*table(("HOST", "STATUS", "COMMIT", "DRIFT", "LAST SEEN", "ROLES"), rows),
                *_more(len(rows), body["total"], "hosts"),
                f"fleet: {counts['total']} host{'' if counts['total'] == 1 else 's'}"
                + (f"; {summary}" if summary else "")
                + (f"; {counts['stale']} stale" if counts.get("stale") else "")]

    return _listing(first, items, "counts"), show


def q_host(client: FleetClient, args: argparse.Namespace) -> tuple[Any, Show]:
    body = client.get(f"hosts/{segment(args.name)}")

    def show(h: dict[str, Any], s: Style) -> list[str]:
        lines = [f"{h['host']}: {s.status(h['status'], stale=h['stale'])} after phase {h['phase_reached']}, "
                 f"mode {h['mode']}",
                 f"  commit     {h['commit'] or '-'} (ref {h['ref'] or '-'})",
                 f"  roles      {', '.join(h['roles']) or '-'}",
                 f"  last run   {h['last_run_id']} finished {s.when(h['last_finished_at'])}",
                 f"  last seen  {s.when(h['last_seen_at'])}; next due {s.when(h['due_at'])}",
                 f"  agent      {h['agent_version']}"]
        if h.get("paused"):
            lines.append(f"  paused     {h.get('pause_reason') or '(no reason)'}")
        drift = h.get("drift", [])
        lines.append(f"drift: {len(drift)} task(s)" if drift else "drift: none")
        if drift:
            lines += table(("KIND", "TASK", "ROLE", "MODULE", "STATE", "SINCE"),
                           [(d["kind"], d["task"], d["role"] or "-", d["module"], d["state"],
                             s.when(d["first_seen_at"])) for d in drift])
        return lines

    return body, show


def q_drift(client: FleetClient, args: argparse.Namespace) -> tuple[Any, Show]:
    group = "host" if args.by_host else "task"
    first, items = client.pages("drift", args.limit, group=group, task=args.task, kind=args.kind,
                                role=args.role, host=args.host)

    def show(body: dict[str, Any], s: Style) -> list[str]:
        if not body["items"]:
            return ["no drift"]
        if group == "host":
            rows = [(d["host"], d["kind"], d["task"], d["role"] or "-", (d["commit"] or "-")[:10])
                    for d in body["items"]]
            return [*table(("HOST", "KIND", "TASK", "ROLE", "COMMIT"), rows),
                    *_more(len(rows), body["total"], "rows")]
        rows = [(t["hosts"], t["task"], t["role"] or "-", ",".join(f"{k} {n}" for k, n in t["kinds"].items()),
                 s.when(t["first_seen_at"])) for t in body["items"]]
        return [*table(("HOSTS", "TASK", "ROLE", "KINDS", "SINCE"), rows),
                *_more(len(rows), body["total"], "tasks")]

    return _listing(first, items, "group"), show


def q_runs(client: FleetClient, args: argparse.Namespace) -> tuple[Any, Show]:
    path = f"hosts/{segment(args.host)}/runs" if args.host else "runs"
    first, items = client.pages(path, args.limit, status=",".join(args.status or []) or None)

    def show(body: dict[str, Any], s: Style) -> list[str]:
        rows = [(s.when(r["finished_at"]), r["host"], s.status(r["status"]), r["trigger"],
                 (r["commit"] or "-")[:10], r["drift_count"], r["changed"], r["failed_count"], r["run_id"])
                for r in body["items"]]
        headers = ("FINISHED", "HOST", "STATUS", "TRIGGER", "COMMIT", "DRIFT", "CHANGED", "FAILED", "RUN ID")
        return [*table(headers, rows), *_more(len(rows), body["total"], "runs")] if rows else ["no runs"]

    return _listing(first, items), show


def q_run(client: FleetClient, args: argparse.Namespace) -> tuple[Any, Show]:
    body = client.get(f"runs/{segment(args.run_id)}")

    def show(r: dict[str, Any], s: Style) -> list[str]:
        report = r["report"]
        lines = [f"run {r['run_id']} on {r['host']}: {s.status(r['status'])} "
                 f"({r['trigger']}, mode {r['mode']})",
                 f"  finished   {r['finished_at']} ({s.when(r['finished_at'])}), "
                 f"reached {r['phase_reached']}",
                 f"  commit     {r['commit'] or '-'}",
                 f"  roles      {', '.join(report.get('roles', [])) or '-'}"]
        lines += [f"  error      [{e['phase']}] {e['message']}" for e in report.get("errors", [])]
        failed = (report.get("apply") or {}).get("failed_tasks", [])
        lines += [f"  failed     {t['task']}: {t['message']}" for t in failed]
        drift = report.get("drift", [])
        lines.append(f"drift: {len(drift)} task(s)" if drift else "drift: none")
        for d in drift:
            paths = ", ".join(x["path"] for x in d.get("diffs", []))
            lines.append(f"  {d['kind']:<12} {d['task']}" + (f"  ({paths})" if paths else ""))
        return lines

    return body, show


def q_commits(client: FleetClient, args: argparse.Namespace) -> tuple[Any, Show]:
    first, items = client.pages("commits", args.limit)

    def show(body: dict[str, Any], s: Style) -> list[str]:
        rows = [(c["sha"][:10], s.when(c["first_seen_at"]), f"{c['running']}/{c['hosts_total']}",
                 c["converged"], c["failed"], (c["subject"] or "")[:60]) for c in body["items"]]
        return [*table(("COMMIT", "FIRST SEEN", "RUNNING", "CONVERGED", "FAILED", "SUBJECT"), rows),
                *_more(len(rows), body["total"], "commits")] if rows else ["no commits reported yet"]

    return _listing(first, items), show


def q_commit(client: FleetClient, args: argparse.Namespace) -> tuple[Any, Show]:
    reached = "not_reached" if args.not_reached else "running"
    path = f"commits/{segment(args.sha)}"
    first, items = client.pages(path, args.limit, listing="hosts", hosts=reached)
    body = {**first, "hosts": _listing(first["hosts"], items)}

    def show(b: dict[str, Any], s: Style) -> list[str]:
        c, n = b["commit"], b["summary"]
        lines = [f"commit {c['sha']} {c.get('subject') or ''}".rstrip(),
                 f"  {n['running']} of {n['hosts_total']} hosts run it: {n['converged']} converged, "
                 f"{n['drifted']} drifted, {n['failed']} failed, {n['paused']} paused; "
                 f"{n['not_reached']} not reached"]
        rows = [(h["host"], s.status(h["status"], stale=h["stale"]), (h["commit"] or "-")[:10],
                 h["drift_count"], s.when(h["last_seen_at"])) for h in b["hosts"]["items"]]
        lines.append("hosts not running it:" if args.not_reached else "hosts running it:")
        lines += table(("HOST", "STATUS", "COMMIT", "DRIFT", "LAST SEEN"), rows) if rows else ["  none"]
        return [*lines, *_more(len(rows), b["hosts"]["total"], "hosts")]

    return body, show


QUERIES: dict[str, Callable[[FleetClient, argparse.Namespace], tuple[Any, Show]]] = {
    "hosts": q_hosts, "host": q_host, "drift": q_drift, "runs": q_runs, "run": q_run, "commits": q_commits,
    "commit": q_commit,
}
