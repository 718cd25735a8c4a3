"""`gitops-collector` starts light: building its parser and printing `--help` (top level and every
subcommand) imports none of the heavy libraries (SQLAlchemy, Alembic, Starlette, Jinja2, msgspec, httpx,
uvicorn, anyio) and only the few collector modules the parser needs; each command imports its own
implementation when it runs. Checked in a fresh interpreter (`sys.modules`), not timed (bench/cli_start.py
gives the figures). The parser's defaults, written out in the CLI modules for this, equal their sources."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from agent.collector import alerts, cli, context, drift_cli, enrolment, evidence, fleet_cli, payload, queries

HEAVY = ("sqlalchemy", "alembic", "starlette", "jinja2", "msgspec", "httpx", "uvicorn", "anyio", "psycopg",
         "cryptography")
# What the parser needs, and nothing else under agent/ (agent.report alone costs more than argparse).
PARSER_MODULES = {"agent", "agent.errors", "agent.collector", "agent.collector.cli", "agent.collector.client",
                  "agent.collector.digits", "agent.collector.drift_cli", "agent.collector.enrol_cli",
                  "agent.collector.errors", "agent.collector.fleet_cli", "agent.collector.hostnames",
                  "agent.collector.terminal"}

PROBE = textwrap.dedent("""\
    import argparse, contextlib, io, json, sys
    from agent.collector.cli import build_parser, main

    def paths(parser, path):
        yield path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from paths(sub, [*path, name])

    helps = {}
    for path in [*paths(build_parser(), []), ["--version"]]:
        out = io.StringIO()
        argv = path if path == ["--version"] else [*path, "--help"]
        with contextlib.redirect_stdout(out):
            try:
                main(argv)
            except SystemExit as e:
                assert e.code == 0, (argv, e.code)
        helps[" ".join(argv)] = out.getvalue()
    print(json.dumps({"helps": helps, "modules": sorted(sys.modules)}))
    """)


def _probe(code: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _heavy(modules: object) -> list[str]:
    assert isinstance(modules, list)
    return [m for m in modules if m.split(".")[0] in HEAVY]


def test_help_of_every_command_imports_nothing_heavy():
    result = _probe(PROBE)
    helps, modules = result["helps"], result["modules"]
    assert isinstance(helps, dict) and isinstance(modules, list)
    # every command and action was reached, and printed its own help
    for command in ("serve", "migrate", "token create", "token list", "token revoke", "enrol approve",
                    "prune", "hosts", "host", "drift", "drift list", "drift accept", "drift export", "runs",
                    "run", "commits", "commit"):
        text = helps[f"{command} --help"]
        assert text.startswith(f"usage: gitops-collector {command}"), (command, text[:80])
    assert "--heads-source" in helps["serve --help"] and "--limit" in helps["drift list --help"]
    assert helps["--version"].startswith("gitops-collector ")
    assert len(helps) >= 25
    assert _heavy(modules) == []
    assert {m for m in modules if m == "agent" or m.startswith("agent.")} <= PARSER_MODULES


def test_a_query_command_needs_no_database_libraries():
    """`hosts` speaks HTTP only: up to an unreachable collector (exit 69) it loads httpx but none of the
    database or server side."""
    code = textwrap.dedent("""\
        import json, os, sys
        from agent.collector.cli import main
        os.environ["GITOPS_COLLECTOR_TOKEN"] = "t"
        code = main(["hosts", "--url", "http://127.0.0.1:9", "--json"])
        print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
        """)
    result = _probe(code)
    assert result["code"] == 69
    assert "httpx" in result["modules"]  # type: ignore[operator]
    assert [m for m in _heavy(result["modules"]) if not m.startswith(("httpx", "anyio"))] == []


def test_a_database_command_still_loads_what_it_runs(tmp_path):
    """The other side of the lazy imports: `migrate` and `token list` run the real thing."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    code = textwrap.dedent(f"""\
        import contextlib, io, json, sys
        from agent.collector.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            codes = [main(["migrate", "--db", {url!r}]), main(["token", "list", "--db", {url!r}, "--json"])]
        print(json.dumps({{"codes": codes, "out": out.getvalue(), "modules": sorted(sys.modules)}}))
        """)
    result = _probe(code)
    assert result["codes"] == [0, 0]
    assert "database schema at revision" in str(result["out"]) and str(result["out"]).endswith("[]\n")
    assert {"sqlalchemy", "alembic"} <= set(result["modules"])  # type: ignore[arg-type]
    listing = _probe(textwrap.dedent(f"""\
        import contextlib, io, json, sys
        from agent.collector.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            codes = [main([*command, "list", "--db", {url!r}]) for command in (["token"], ["enrol"], ["drift"])]
        print(json.dumps({{"codes": codes, "modules": sorted(sys.modules)}}))
        """))
    assert listing["codes"] == [0, 0, 0]
    # reading tokens, requests or drift items needs the database only, not the server's parts (context, Starlette)
    assert not {"starlette", "anyio", "agent.collector.context"} & set(listing["modules"])  # type: ignore[arg-type]


def test_the_parsers_defaults_equal_their_sources():
    """The defaults the CLI modules write out (so that --help needs none of these modules) are the
    defaults of the fields they stand for."""
    written = {"max_body": cli.MAX_BODY_BYTES, "max_depth": cli.MAX_DEPTH, "max_string": cli.MAX_STRING_CHARS,
               "group_wait": cli.GROUP_WAIT_S, "group_interval": cli.GROUP_INTERVAL_S,
               "enrol_max_pending": cli.ENROL_MAX_PENDING,
               "enrol_max_pending_per_address": cli.ENROL_MAX_PENDING_PER_ADDRESS,
               "formats": drift_cli.FORMATS, "severity": fleet_cli.SEVERITY, "host_sorts": fleet_cli.HOST_SORTS}
    sources = {"max_body": context.DEFAULT_MAX_BODY_BYTES, "max_depth": payload.PayloadLimits.max_depth,
               "max_string": payload.PayloadLimits.max_string_chars, "group_wait": alerts.Grouping.wait_s,
               "group_interval": alerts.Grouping.interval_s,
               "enrol_max_pending": enrolment.EnrolPolicy.max_pending,
               "enrol_max_pending_per_address": enrolment.EnrolPolicy.max_pending_per_address,
               "formats": evidence.FORMATS, "severity": queries.SEVERITY, "host_sorts": tuple(queries.HOST_SORTS)}
    assert written == sources
    serve = cli.build_parser().parse_args(["serve"])
    settings = cli._settings(serve)
    assert settings.max_body_bytes == context.CollectorSettings().max_body_bytes
    assert settings.payload == payload.PayloadLimits()
    assert settings.alert_grouping == alerts.Grouping()
    assert settings.enrol == enrolment.EnrolPolicy()


def test_serve_logs_no_import_noise(tmp_path):
    """`serve` sets up logging at INFO; the libraries it imports late must not log into it (importing
    Alembic logs its plugins at INFO): a refused option is still exactly one line on stderr."""
    done = subprocess.run([sys.executable, "-m", "agent.collector.cli", "serve", "--public-url", "nope",
                           "--db", f"sqlite:///{tmp_path / 'none' / 'c.db'}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == "gitops-collector: --public-url 'nope': expected http(s)://HOST[:PORT]\n"
    assert not (tmp_path / "none").exists()
