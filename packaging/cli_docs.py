#!/usr/bin/env python3
"""A command's man page and shell completions (bash, zsh), generated from its argparse parser.

    python3 packaging/cli_docs.py agent.cli:build_parser OUTDIR [--src DIR] [--date YYYY-MM-DD]

writes, for the parser's program PROG (e.g. gitops-agent), the files as they are installed:
    OUTDIR/usr/share/man/man1/PROG.1.gz                  (argparse-manpage)
    OUTDIR/usr/share/bash-completion/completions/PROG    (shtab)
    OUTDIR/usr/share/zsh/vendor-completions/_PROG        (shtab; Debian's place, the .rpm moves it)
packaging/build.py calls `generate` for each command it packages; any other parser (the collector's)
needs only its `module:function`. The parser is imported from --src, so a package documents the tree it
is built from. Needs argparse-manpage and shtab (the `dev` extra: the build machine's venv).
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

MAN_DIR = "usr/share/man/man1"
BASH_DIR = "usr/share/bash-completion/completions"
ZSH_DIR = "usr/share/zsh/vendor-completions"


def load_parser(spec: str, src: Path) -> argparse.ArgumentParser:
    """'agent.cli:build_parser' -> the parser that function builds, imported from the tree `src`."""
    module_name, _, function = spec.partition(":")
    sys.path.insert(0, str(src))
    try:
        module = importlib.import_module(module_name)
    finally:
        sys.path.pop(0)
    build: Callable[[], argparse.ArgumentParser] = getattr(module, function)
    return build()


def _roff(text: str) -> str:
    return text.replace("\\", "\\\\").replace("-", "\\-")


def man_page(parser: argparse.ArgumentParser, *, version: str, date: str, summary: str,
             files: tuple[tuple[str, str], ...] = ()) -> str:
    """The roff text of PROG(1): synopsis, description, every command with its options, the epilog."""
    from argparse_manpage.manpage import Manpage

    parser.man_short_description = summary  # type: ignore[attr-defined]  # argparse-manpage's hook
    page = Manpage(parser)
    page.date = date
    page.source = f"{parser.prog} {version}"
    page.manual = f"{parser.prog} manual"
    if files:
        lines = "\n".join(f".TP\n.B {_roff(path)}\n{_roff(what)}" for path, what in files)
        page.add_section("FILES", "=", lines)  # "=": the same parser twice gives the same page
    return str(page)


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    import shtab

    text: str = shtab.complete(parser, shell=shell)
    return text


def generate(parser: argparse.ArgumentParser, out: Path, *, version: str, date: str, summary: str,
             files: tuple[tuple[str, str], ...] = ()) -> list[Path]:
    """Write the man page (gzipped, reproducible) and both completions under `out`; return the paths."""
    prog = parser.prog
    man = out / MAN_DIR / f"{prog}.1.gz"
    bash = out / BASH_DIR / prog
    zsh = out / ZSH_DIR / f"_{prog}"
    for path in (man, bash, zsh):
        path.parent.mkdir(parents=True, exist_ok=True)
    text = man_page(parser, version=version, date=date, summary=summary, files=files)
    with man.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0,
                                              filename="") as packed:
        packed.write(text.encode())
    bash.write_text(completion(parser, "bash"), encoding="utf-8")
    zsh.write_text(completion(parser, "zsh"), encoding="utf-8")
    for path in (man, bash, zsh):
        path.chmod(0o644)
    return [man, bash, zsh]


# What each packaged command's man page says beyond its parser.
AGENT = {
    "spec": "agent.cli:build_parser",
    "summary": "keep this host in the state its Git repository declares (Ansible), report drift",
    "files": (("/etc/gitops-agent/agent.yaml", "the configuration (gitops-agent --help lists every setting)"),
              ("/etc/gitops-agent/token", "the collector ingest token (mode 0600)"),
              ("/var/lib/gitops-agent", "state_dir: last_run.json, history/, outbox/, releases/, "
                                        "daemon.json, pause.json"),
              ("/usr/share/doc/gitops-agent", "operations.md, packaging.md, air-gapped.md")),
}


def build_date() -> str:
    """SOURCE_DATE_EPOCH's date when set (reproducible builds), else today's (UTC)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return time.strftime("%Y-%m-%d", time.gmtime(int(epoch) if epoch else None))


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("spec", help="module:function that returns the argparse parser")
    cli.add_argument("out", type=Path, help="output root (files go to usr/share/... below it)")
    cli.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1], help="source tree")
    cli.add_argument("--version", default="0", help="the version shown in the man page's footer")
    cli.add_argument("--summary", default="", help="one line for the man page's NAME section")
    cli.add_argument("--date", default=build_date(), help="the man page's date")
    args = cli.parse_args(argv)
    parser = load_parser(args.spec, args.src.resolve())
    for path in generate(parser, args.out, version=args.version, date=args.date, summary=args.summary):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
