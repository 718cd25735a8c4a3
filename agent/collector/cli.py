"""`gitops-collector`: serve, migrate, token create/list/revoke, enrol (`enrol_cli`), prune, the fleet
queries of `fleet_cli` (hosts, host, drift, runs, run, commits, commit) and the drift review's `drift
list|ack|accept|revoke|export` of `drift_cli`. The collector's composition root; it, `enrol_cli`,
`fleet_cli` and `drift_cli` are the only places in the collector that print.

Exit codes: 0 done; 1 failed; 2 bad usage; 66 no such database (or host, run, commit); 69 collector
unreachable; 77 token refused; 78 bad URL, token file or CA file (sysexits.h)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

# Building the parser and printing --help import nothing heavy (SQLAlchemy, Alembic, Starlette, msgspec,
# httpx...): each command imports what it runs in its own function, so `--help` and the light commands
# start fast. tests/collector/test_cli_imports.py keeps it so.
from agent import __version__
from agent.collector import drift_cli, enrol_cli, fleet_cli
from agent.collector.digits import whole_number
from agent.collector.errors import CollectorError, ConfigurationError
from agent.collector.hostnames import host_name_problem
from agent.errors import AgentError, UsageError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from starlette.applications import Starlette

    from agent.collector import tokens
    from agent.collector.alerts import Webhook
    from agent.collector.context import CollectorSettings
    from agent.collector.enrolment import EnrolPolicy
    from agent.collector.heads import HeadsSettings

DB_ENV = "GITOPS_COLLECTOR_DB"
WEBHOOKS_ENV = "GITOPS_COLLECTOR_WEBHOOKS"
WEBHOOK_FILE_ENV = "GITOPS_COLLECTOR_WEBHOOK_FILE"
SERVE_ARGS_ENV = "GITOPS_COLLECTOR_SERVE_ARGS"
DEFAULT_DB = "sqlite:////var/lib/gitops-collector/collector.db"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)?$")
_SIZE = re.compile(r"^(\d+)(B|KB|MB|GB)?$", re.IGNORECASE)
# `serve`'s defaults, written out here so that the parser needs none of the modules they come from; each
# is the default of the named field, tests/collector/test_cli_imports.py checks that they stay equal.
MAX_BODY_BYTES = 5 * 1024 * 1024  # context.DEFAULT_MAX_BODY_BYTES
MAX_DEPTH = 32  # payload.PayloadLimits.max_depth
MAX_STRING_CHARS = 1024 * 1024  # payload.PayloadLimits.max_string_chars
GROUP_WAIT_S = 30.0  # alerts.Grouping.wait_s
GROUP_INTERVAL_S = 300.0  # alerts.Grouping.interval_s
ENROL_MAX_PENDING = 1000  # enrolment.EnrolPolicy.max_pending
ENROL_MAX_PENDING_PER_ADDRESS = 20  # enrolment.EnrolPolicy.max_pending_per_address


def duration_s(text: str) -> float:
    """'90d' -> seconds; units s, m, h, d (a bare number is seconds)."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 10m, 1h, 90d)")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[match.group(2)]


def size_bytes(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 5MB, 512KB)")
    unit = (match.group(2) or "B").upper()
    return int(match.group(1)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[unit]


def webhook(text: str) -> Webhook:
    from agent.collector.alerts import parse_webhook

    try:
        return parse_webhook(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    number = whole_number(port)
    if not sep or number is None or number > 65535 or not host:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), number


class _Parser(argparse.ArgumentParser):
    """argparse, except that a wrong command line is one line (exit 2, as argparse's own): its message and
    where to look, not the whole usage. Subcommands' parsers are made of this class too (add_subparsers)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]  # "token create" of "gitops-collector token create"
        raise UsageError(f"{command + ': ' if command else ''}{message} (see: {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=os.environ.get(DB_ENV, DEFAULT_DB),
                        help=f"database URL: sqlite:///PATH or postgresql://... (env {DB_ENV})")
    parser = _Parser(prog="gitops-collector", description="gitops-agent report collector")
    parser.add_argument("--version", action="version", version=f"gitops-collector {__version__}")
    # typed as argparse's own: the commands' parsers are _Parser at run time (add_subparsers makes them of
    # the parent's class), which the helpers that add them need not know
    sub = cast("argparse._SubParsersAction[argparse.ArgumentParser]",
               parser.add_subparsers(dest="command", required=True))
    serve = sub.add_parser("serve", parents=[common], help="serve the ingest and query API")
    serve.add_argument("--listen", type=listen_address, default=("127.0.0.1", 8080), help="HOST:PORT")
    serve.add_argument("--max-body", type=size_bytes, default=MAX_BODY_BYTES,
                       help="largest accepted report body (default 5MB)")
    serve.add_argument("--max-depth", type=int, default=MAX_DEPTH,
                       help=f"deepest JSON nesting accepted in a report (default {MAX_DEPTH})")
    serve.add_argument("--max-string", type=size_bytes, default=MAX_STRING_CHARS,
                       help="longest string accepted in a report, in characters (default 1MB)")
    serve.add_argument("--stale-grace", type=duration_s, default=600.0,
                       help="a host is stale after interval + splay + this (default 10m)")
    serve.add_argument("--trusted-header", help="reader name header set by a reverse proxy (off by default)")
    serve.add_argument("--trusted-proxy", action="append", default=None,
                       help="address of that proxy (repeatable; default 127.0.0.1 and ::1)")
    serve.add_argument("--reviewer", action="append", default=[], metavar="USER",
                       help="a --trusted-header user who may acknowledge and accept drift (repeatable); "
                            "other proxy users only read")
    serve.add_argument("--public-metrics", action="store_true", help="serve /metrics without a token")
    serve.add_argument("--db-threads", type=int, default=8, help="threads for database calls, per process")
    serve.add_argument("--group-commit", action=argparse.BooleanOptionalAction, default=True,
                       help="store the reports that arrive during a commit together in the next one "
                            "(one transaction and fsync per batch; default on; --no-group-commit stores "
                            "each report in its own transaction, docs/scale.md)")
    serve.add_argument("--writer-process", action="store_true",
                       help="store the group commit's batches in a child process, so that storing and "
                            "serving use two cores (answers still wait for the commit; docs/scale.md)")
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes (for PostgreSQL; SQLite gains little, it has one writer)")
    serve.add_argument("--tls-cert", help="serve HTTPS with this certificate chain (PEM); or use a proxy")
    serve.add_argument("--tls-key", help="the certificate's private key (PEM)")
    serve.add_argument("--tls-client-ca", metavar="FILE",
                       help="require client certificates signed by this CA (PEM); a report's host must be "
                            "the name the certificate gives (first DNS subjectAltName, else CN)")
    serve.add_argument("--webhook", action="append", type=webhook, default=[], metavar="URL[,json|slack]",
                       help="send alerts on host state changes to URL (repeatable; payload json or slack). "
                            "Visible to every local user in `ps`: prefer --webhook-file or "
                            f"${WEBHOOKS_ENV} for URLs that carry a secret")
    serve.add_argument("--webhook-file", type=Path, metavar="FILE", default=os.environ.get(WEBHOOK_FILE_ENV),
                       help="webhooks, one URL[,json|slack] a line (# comments); not readable by others "
                            f"(env {WEBHOOK_FILE_ENV})")
    serve.add_argument("--public-url", action="append", default=[], metavar="URL",
                       help="where browsers reach the collector when it differs from the address served, "
                            "e.g. https://collector.example.com behind a proxy (repeatable): accepted as "
                            "the Origin of the login form, makes the session cookie Secure, links in alerts")
    serve.add_argument("--operator", action="append", default=[], metavar="NAME",
                       help="a reader (token name or trusted-header user) allowed to halt, resume and skip "
                            "rollouts and approve plans (repeatable; none by default)")
    serve.add_argument("--rollout-cache", type=duration_s, default=2.0, metavar="DURATION",
                       help="how long agents' rollout answers are served from memory, per process "
                            "(default 2s; keep it well under the agents' schedule.poll)")
    serve.add_argument("--notify-interval", type=duration_s, default=15.0,
                       help="how often to look for state changes and retry deliveries (default 15s)")
    serve.add_argument("--alert-group-wait", type=duration_s, default=GROUP_WAIT_S,
                       help="hold a new alert group (kind, task, commit) this long for more hosts (30s)")
    serve.add_argument("--alert-group-interval", type=duration_s, default=GROUP_INTERVAL_S,
                       help="then send further hosts of that group at most this often (default 5m)")
    serve.add_argument("--heads-source", action="append", default=[], metavar="URL[#REF,...]",
                       help="commit beacon: watch these refs of this Git repository (default ref main; "
                            "repeatable) and serve their heads on /api/v1/heads, so agents with "
                            "collector.beacon ask Git only when a head moves (docs/scale.md)")
    serve.add_argument("--heads-poll", type=duration_s, default=60.0,
                       help="the leading collector asks Git (one ls-remote per source) this often (1m)")
    serve.add_argument("--hook-secret-file", type=Path, metavar="FILE",
                       help="accept push hooks on /api/v1/hooks/{github,gitlab,gitea,generic} signed with "
                            "the secret in FILE (not readable by others); a hook makes the collector ask "
                            "Git at once")
    serve.add_argument("--enrol-autosign", action="append", default=[], metavar="GLOB",
                       help="approve enrolment requests at once when a client certificate (--tls-client-ca) "
                            "names the host and the name matches GLOB (repeatable; never for a host that "
                            "already has a token or reports; secret-authenticated requests always wait)")
    serve.add_argument("--enrol-max-pending", type=int, default=ENROL_MAX_PENDING, metavar="N",
                       help=f"refuse (429) new enrolment requests while N are pending (default "
                            f"{ENROL_MAX_PENDING})")
    serve.add_argument("--enrol-max-pending-per-address", type=int, metavar="N",
                       default=ENROL_MAX_PENDING_PER_ADDRESS,
                       help="refuse (429) new enrolment requests while N from one peer address are pending "
                            f"(default {ENROL_MAX_PENDING_PER_ADDRESS})")
    serve.add_argument("--prune-older-than", type=duration_s, metavar="DURATION",
                       help="the leading collector deletes runs finished longer ago than this (each host's "
                            "latest kept) when it takes the lead and then hourly, like `prune --older-than`; "
                            "off by default")
    serve.add_argument("--evidence-key", type=Path, metavar="FILE",
                       help="sign evidence bundles with this OpenSSH private key (no passphrase, mode 0600; "
                            "ssh-keygen -t ed25519 -N '' -f FILE); docs/drift-review.md")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub.add_parser("migrate", parents=[common], help="create or upgrade the database schema")
    _token_parser(sub, common)
    enrol_cli.add_parser(sub, common)
    prune = sub.add_parser("prune", parents=[common], help="delete old runs (keeps each host's latest)")
    prune.add_argument("--older-than", type=duration_s, required=True, help="e.g. 90d")
    fleet_cli.add_parsers(sub)
    drift_cli.add_actions(sub.choices["drift"], common)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (for the man page and shell completions, packaging/clidocs.py)."""
    return _parser()


def _token_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                  common: argparse.ArgumentParser) -> None:
    token = sub.add_parser("token", help="manage API tokens").add_subparsers(dest="action", required=True)
    create = token.add_parser("create", parents=[common], help="create a token and print it once")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("host", nargs="?", help="host the ingest token is bound to")
    who.add_argument("--reader", metavar="NAME", help="create a reader token for a person or tool")
    who.add_argument("--reviewer", metavar="NAME",
                     help="create a reviewer token: reads, and acknowledges or accepts drift")
    who.add_argument("--enrol", metavar="NAME",
                     help="create a site enrolment secret: hosts with it may ask for their own token, "
                          "which an operator approves (gitops-collector enrol)")
    who.add_argument("--hosts-from", type=Path, metavar="FILE",
                     help="ingest tokens for every host named in FILE (one a line, # comments; - for stdin), "
                          "in one transaction; prints HOST<TAB>TOKEN lines, or see --out-dir")
    create.add_argument("--out-dir", type=Path, metavar="DIR",
                        help="with --hosts-from: write each host's token to DIR/HOST (mode 0600) instead")
    listing = token.add_parser("list", parents=[common], help="list tokens (never the secrets)")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    revoke = token.add_parser("revoke", parents=[common], help="revoke tokens by id, prefix or name")
    revoke.add_argument("ref")


@contextmanager
def _open(url: str, *, check: bool = True) -> Iterator[Engine]:
    from agent.collector import db

    engine = db.create(url)
    try:
        if check:
            db.prepare(engine)
        yield engine
    finally:
        engine.dispose()


def _webhook_lines(text: str, where: str) -> list[Webhook]:
    from agent.collector.alerts import parse_webhook

    hooks = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            try:
                hooks.append(parse_webhook(entry))
            except ValueError as e:
                raise CollectorError(f"{where}, line {number}: {e}") from None
    return hooks


def _webhook_file(path: Path) -> list[Webhook]:
    """Webhooks from a file that others cannot read (like ssh for keys; the group may, for a service)."""
    try:
        mode = path.stat().st_mode
        if mode & 0o007:
            raise CollectorError(f"--webhook-file {path}: permissions {stat.S_IMODE(mode):04o} let others "
                                 f"read its secrets (chmod o-rwx {path})")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CollectorError(f"--webhook-file {path}: cannot read it ({e})") from e
    return _webhook_lines(text, f"--webhook-file {path}")


def webhooks_of(args: argparse.Namespace) -> tuple[Webhook, ...]:
    """--webhook, then --webhook-file, then $GITOPS_COLLECTOR_WEBHOOKS (whitespace-separated); each URL
    once."""
    from agent.collector.alerts import mask_url

    hooks = list(args.webhook)
    if args.webhook_file is not None:
        hooks += _webhook_file(args.webhook_file)
    hooks += _webhook_lines("\n".join(os.environ.get(WEBHOOKS_ENV, "").split()), f"${WEBHOOKS_ENV}")
    seen: set[str] = set()
    for hook in hooks:
        if hook.url in seen:
            raise CollectorError(f"webhook {mask_url(hook.url)}: the same URL is given twice")
        seen.add(hook.url)
    return tuple(hooks)


def heads_of(args: argparse.Namespace) -> HeadsSettings | None:
    """The commit beacon's settings, or None when no source is watched; one-line errors."""
    from agent.collector.heads import HeadsSettings, check_sources, parse_source

    if not args.heads_source:
        if args.hook_secret_file is not None:
            raise CollectorError("--hook-secret-file needs --heads-source: a hook names a watched source")
        return None
    if args.heads_poll < 1:
        raise CollectorError("--heads-poll must be at least 1s")
    sources = check_sources(tuple(parse_source(text) for text in args.heads_source))
    secret = None
    if args.hook_secret_file is not None:
        path = args.hook_secret_file
        try:
            mode = path.stat().st_mode
            if mode & 0o007:
                raise CollectorError(f"--hook-secret-file {path}: permissions {stat.S_IMODE(mode):04o} let "
                                     f"others read the secret (chmod o-rwx {path})")
            secret = path.read_text(encoding="utf-8").strip().encode()
        except (OSError, UnicodeDecodeError) as e:
            raise CollectorError(f"--hook-secret-file {path}: cannot read it ({e})") from e
        if len(secret) < 16 or b"\n" in secret:
            raise CollectorError(f"--hook-secret-file {path}: expected one line of at least 16 characters")
    return HeadsSettings(sources, args.heads_poll, secret)


def _public_urls(urls: list[str]) -> tuple[str, ...]:
    from agent.collector.ui_auth import origin_of

    for url in urls:
        if origin_of(url) is None:
            raise CollectorError(f"--public-url {url!r}: expected http(s)://HOST[:PORT]")
    return tuple(urls)


def _settings(args: argparse.Namespace) -> CollectorSettings:
    from agent.collector import evidence
    from agent.collector.alerts import Grouping
    from agent.collector.auth import ProxyAuth
    from agent.collector.compliance_store import SNAPSHOT_S
    from agent.collector.context import CollectorSettings
    from agent.collector.payload import PayloadLimits

    proxy = None
    if args.trusted_header:
        proxy = ProxyAuth(args.trusted_header, tuple(args.trusted_proxy or ("127.0.0.1", "::1")))
    return CollectorSettings(max_body_bytes=args.max_body, stale_grace_s=args.stale_grace, proxy=proxy,
                             public_metrics=args.public_metrics, db_threads=max(1, args.db_threads),
                             webhooks=webhooks_of(args), notify_interval_s=args.notify_interval,
                             payload=PayloadLimits(max_depth=max(1, args.max_depth),
                                                   max_string_chars=args.max_string),
                             client_cert_required=bool(args.tls_client_ca),
                             alert_grouping=Grouping(args.alert_group_wait, args.alert_group_interval),
                             public_urls=_public_urls(args.public_url), reviewers=tuple(args.reviewer),
                             group_commit=args.group_commit, writer_process=_writer_process(args),
                             heads=heads_of(args),
                             operators=tuple(args.operator), rollout_cache_s=args.rollout_cache,
                             enrol=_enrol_policy(args),
                             prune_older_than_s=_prune_age(args.prune_older_than),
                             compliance_snapshot_s=SNAPSHOT_S,
                             evidence_key=evidence.load_key(args.evidence_key) if args.evidence_key else None)


def _writer_process(args: argparse.Namespace) -> bool:
    if args.writer_process and not args.group_commit:
        raise CollectorError("--writer-process stores the group commit's batches: it needs group commit "
                             "(drop --no-group-commit)")
    return bool(args.writer_process)


def _enrol_policy(args: argparse.Namespace) -> EnrolPolicy:
    from agent.collector.enrolment import EnrolPolicy

    if args.enrol_autosign and not args.tls_client_ca:
        raise CollectorError("--enrol-autosign needs --tls-client-ca: only a certificate proves a host's "
                             "name")
    if args.enrol_max_pending < 1 or args.enrol_max_pending_per_address < 1:
        raise CollectorError("--enrol-max-pending and --enrol-max-pending-per-address must be at least 1")
    return EnrolPolicy(autosign=tuple(args.enrol_autosign), max_pending=args.enrol_max_pending,
                       max_pending_per_address=args.enrol_max_pending_per_address)


def _prune_age(seconds: float | None) -> float | None:
    if seconds is not None and seconds < 3600:
        raise CollectorError("--prune-older-than must be at least 1h (runs younger than that are the fleet's "
                             "current state)")
    return seconds


def app_from_env() -> Starlette:
    """uvicorn's app factory in each worker process of `serve --workers N` (N > 1)."""
    from agent.collector import db
    from agent.collector.app import create_app
    from agent.collector.context import Collector
    from agent.collector.heap import freeze_startup_heap

    args = _parser().parse_args(json.loads(os.environ[SERVE_ARGS_ENV]))
    app = create_app(Collector(db.create(args.db), _settings(args)))
    freeze_startup_heap()
    return app


def _serve(args: argparse.Namespace, argv: list[str]) -> int:
    import ssl

    import uvicorn

    from agent.collector import db
    from agent.collector.app import create_app
    from agent.collector.context import Collector
    from agent.collector.heap import freeze_startup_heap
    from agent.redact import redact_url

    if bool(args.tls_cert) != bool(args.tls_key):
        raise CollectorError("serve: --tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise CollectorError("serve: --tls-client-ca needs --tls-cert and --tls-key")
    settings = _settings(args)  # refuses bad webhooks and public URLs before anything starts
    _check_tls_files(args)
    _check_listen(*args.listen)
    with _open(args.db) as engine:  # checks (or creates) the schema once, before any worker starts
        host, port = args.listen
        # proxy_headers=False: the client address is the socket's peer. uvicorn would otherwise take it
        # from X-Forwarded-For on connections from $FORWARDED_ALLOW_IPS, and --trusted-proxy would then
        # trust whatever address a client wrote there (and distrust the real local proxy).
        options: dict[str, Any] = {"host": host, "port": port, "log_level": args.log_level,
                                   "access_log": args.log_level == "debug", "proxy_headers": False,
                                   "ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key}
        if args.tls_client_ca:
            options.update(ssl_ca_certs=args.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED,
                           http="agent.collector.tls:ClientCertProtocol")
        logging.getLogger(__name__).info("serving on %s:%d with %d process(es), database %s", host, port,
                                         args.workers, redact_url(db.normalize_url(args.db)))
        if args.workers > 1:
            os.environ[SERVE_ARGS_ENV] = json.dumps(argv)
            engine.dispose()
            uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=args.workers, **options)
        else:
            app = create_app(Collector(engine, settings))
            freeze_startup_heap()
            uvicorn.run(app, **options)
    return 0


def _check_tls_files(args: argparse.Namespace) -> None:
    """Load --tls-cert/--tls-key (and --tls-client-ca) as uvicorn will, so that an unreadable or wrong file
    is one line (ConfigurationError) before a database is opened, not a traceback from the server."""
    import ssl

    if not args.tls_cert:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigurationError(f"serve: --tls-cert {args.tls_cert} / --tls-key {args.tls_key}: cannot load "
                                 f"them ({getattr(e, 'strerror', None) or e})") from None
    if args.tls_client_ca:
        try:
            context.load_verify_locations(args.tls_client_ca)
        except (OSError, ssl.SSLError) as e:
            raise ConfigurationError(f"serve: --tls-client-ca {args.tls_client_ca}: cannot load it "
                                     f"({getattr(e, 'strerror', None) or e})") from None


def _check_listen(host: str, port: int) -> None:
    """Bind the --listen address once (SO_REUSEADDR, as uvicorn does) and let it go, so that an address in
    use is one line before a database is opened. Another process can still take the port in between; then
    uvicorn says so itself."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        shown = f"[{host}]" if ":" in host else host
        raise CollectorError(f"serve: cannot listen on {shown}:{port}: {e.strerror or e}") from None


def hosts_file(path: Path) -> list[str]:
    """Host names from FILE (or stdin for -): one a line, blank lines and # comments skipped; a bad or
    repeated name is refused with its line number."""
    try:
        text_ = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CollectorError(f"--hosts-from {path}: cannot read it ({e})") from e
    hosts: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text_.splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        problem = host_name_problem(name)
        if problem is not None:
            raise CollectorError(f"--hosts-from {path}, line {number}: {name[:80]!r}: {problem}")
        if name in seen:
            raise CollectorError(f"--hosts-from {path}, line {number}: {name!r} is already on line "
                                 f"{seen[name]}")
        seen[name] = number
        hosts.append(name)
    if not hosts:
        raise CollectorError(f"--hosts-from {path}: no host names in it")
    return hosts


def _check_token_create(args: argparse.Namespace) -> None:
    """Before `token create` opens (or creates) its database: the --db URL, --out-dir's company, and with
    --hosts-from the file read into `args.hosts` and --out-dir checked for clashes (made, when missing,
    only once the database is open), so that a bad input leaves nothing behind."""
    from agent.collector import db

    db.check_url(db.normalize_url(args.db))
    if args.out_dir is not None and args.hosts_from is None:
        raise CollectorError("token create: --out-dir goes with --hosts-from")
    if args.hosts_from is None:
        return
    args.hosts = hosts_file(args.hosts_from)
    out: Path | None = args.out_dir
    clash = [h for h in args.hosts if (out / h).exists()] if out is not None else []
    if clash:
        raise CollectorError(f"--out-dir {out}: {clash[0]} already exists (and {len(clash) - 1} more); "
                             "nothing was created")


def _token_bulk(engine: Engine, args: argparse.Namespace) -> int:
    from agent.collector import tokens
    from agent.collector.context import utc_now

    hosts: list[str] = args.hosts  # read by _check_token_create before the database opened
    out: Path | None = args.out_dir
    if out is not None:
        try:
            out.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise CollectorError(f"--out-dir {out}: cannot create it ({e})") from e
    made = tokens.create_many(engine, hosts, now=utc_now())
    if out is None:
        for info, secret in made:
            print(f"{info.name}\t{secret}")
        return 0
    for info, secret in made:
        path = out / info.name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secret + "\n")
    print(f"{len(made)} ingest tokens written to {out}/HOST (mode 0600); each is shown nowhere else",
          file=sys.stderr)
    return 0


def _now() -> datetime:
    """context.utc_now, imported by the commands that write only: `token list` has no use for the rest of
    agent.collector.context (it loads the server's parts)."""
    from agent.collector.context import utc_now

    return utc_now()


def _token(engine: Engine, args: argparse.Namespace) -> int:
    from agent.collector import tokens
    from agent.collector.tokens import TokenKind

    if args.action == "create" and args.hosts_from is not None:
        return _token_bulk(engine, args)
    if args.action == "create":
        # `is not None`: an empty name ("--reader ''") is refused by tokens.create, not taken for a host
        kind, name = ((TokenKind.READER, args.reader) if args.reader is not None
                      else (TokenKind.INGEST, args.host))
        if args.reviewer is not None:
            kind, name = TokenKind.REVIEWER, args.reviewer
        if args.enrol is not None:
            kind, name = TokenKind.ENROL, args.enrol
        info, secret = tokens.create(engine, kind, name, now=_now())
        print(f"{kind.value} token {info.id} for {name!r} (prefix {info.prefix}); shown once, store it now:")
        print(secret)
    elif args.action == "list" and args.json:
        print(json.dumps([_token_json(t) for t in tokens.list_all(engine)], indent=2))
    elif args.action == "list":
        from agent.collector.terminal import printable  # a kind or name from a shared database

        print(f"{'ID':>4}  {'KIND':<8}  {'NAME':<30}  {'PREFIX':<12}  {'CREATED':<20}  REVOKED")
        for t in tokens.list_all(engine):
            revoked = t.revoked_at.strftime("%Y-%m-%d %H:%M") if t.revoked_at else "-"
            created = t.created_at.strftime("%Y-%m-%d %H:%M")
            shown_kind, shown_name = printable(t.kind), printable(t.name)
            print(f"{t.id:>4}  {shown_kind:<8}  {shown_name:<30}  {t.prefix:<12}  {created:<20}  {revoked}")
    else:
        print(f"revoked {tokens.revoke(engine, args.ref, now=_now())} token(s)")
    return 0


def _token_json(t: tokens.TokenInfo) -> dict[str, Any]:
    from agent.report import format_time

    return {"id": t.id, "kind": str(t.kind), "name": t.name, "prefix": t.prefix,
            "created_at": format_time(t.created_at),
            "revoked_at": format_time(t.revoked_at) if t.revoked_at else None}


# Commands that only read or change what is there: they never create a database (a wrong --db must not
# leave an empty database behind). `migrate`, `serve` and `token create` create one when there is none.
NEEDS_EXISTING_DB = {("token", "list"), ("token", "revoke"), ("prune", None), ("enrol", "list"),
                     ("enrol", "approve"), ("enrol", "deny")}


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.command == "serve":
        return _serve(args, argv)
    if drift_cli.is_action(args):
        with _open_existing(args.db) as engine:
            return drift_cli.run(engine, args)
    if args.command in fleet_cli.COMMANDS:
        return fleet_cli.run_query(args)
    if (args.command, getattr(args, "action", None)) in NEEDS_EXISTING_DB:
        with _open_existing(args.db) as engine:
            if args.command == "enrol":
                return enrol_cli.run(engine, args)
            return _token(engine, args) if args.command == "token" else _prune(engine, args)
    if args.command == "token":  # token create: what it was given is checked before a database is made
        _check_token_create(args)
    with _open(args.db, check=args.command != "migrate") as engine:
        if args.command == "migrate":
            from agent.collector import db, review_backfill

            print(f"database schema at revision {db.migrate(engine)}")
            filled = review_backfill.backfill(engine)
            if filled:
                print(f"drift review: current drift of {filled} host(s) taken from their last run")
            return 0
        return _token(engine, args)  # token create


def _prune(engine: Engine, args: argparse.Namespace) -> int:
    from agent.collector import store
    from agent.collector.context import utc_now

    cutoff = utc_now() - timedelta(seconds=args.older_than)
    pruned = store.prune(engine, older_than=cutoff)
    print(f"pruned {pruned} run(s) finished before {cutoff:%Y-%m-%d %H:%M}Z")
    return 0


@contextmanager
def _open_existing(url: str) -> Iterator[Engine]:
    """An engine on a database that exists and has this collector's schema; never creates either."""
    from agent.collector import db

    db.require_existing(url)
    engine = db.create(url)
    try:
        db.prepare(engine, auto_migrate_empty=False)
        yield engine
    finally:
        engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        print(f"gitops-collector: {e}", file=sys.stderr)
        return 2
    if args.command == "serve":  # before logging is set up, as when the parser imported it: importing
        import agent.collector.db  # noqa: F401  Alembic logs each of its plugins at INFO
    logging.basicConfig(level=getattr(args, "log_level", "warning").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(args, argv)
    except AgentError as e:
        print(f"gitops-collector: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 1))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `gitops-collector hosts | head`: the reader left; no traceback, no retry
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
