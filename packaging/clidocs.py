"""Man pages and shell completions (bash, zsh) of the packaged commands, generated from their argparse
parsers at build time (argparse-manpage for the page, shtab for the completions), so they always match
the code. `stage(stage_dir, name)` writes them where Debian looks; rpm.restage moves the zsh one.

    python3 packaging/clidocs.py gitops-collector OUT_DIR    # to look at them without building
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import io
import os
import sys
from pathlib import Path

# command -> "module:function" returning its whole argparse parser
PARSERS = {
    "gitops-collector": "agent.collector.cli:build_parser",
}
SECTIONS = {
    "gitops-collector": {
        "exit status": (
            ".TP\n\\fB0\\fR\ndone\n"
            ".TP\n\\fB1\\fR\nfailed (the database or the collector answered an error)\n"
            ".TP\n\\fB2\\fR\nbad usage\n"
            ".TP\n\\fB66\\fR\nno such database; or no such host, run or commit\n"
            ".TP\n\\fB69\\fR\nthe collector cannot be reached, or is unavailable\n"
            ".TP\n\\fB77\\fR\nthe collector refused the token\n"
            ".TP\n\\fB78\\fR\na bad collector URL, token file or CA file"),
        "environment": (
            ".TP\n\\fBGITOPS_COLLECTOR_DB\\fR\ndatabase URL (instead of \\-\\-db)\n"
            ".TP\n\\fBGITOPS_COLLECTOR_URL\\fR\ncollector URL of the query commands (instead of \\-\\-url)\n"
            ".TP\n\\fBGITOPS_COLLECTOR_TOKEN_FILE\\fR\n"
            "file holding a reader token (instead of \\-\\-token\\-file)\n"
            ".TP\n\\fBGITOPS_COLLECTOR_TOKEN\\fR\na reader token itself\n"
            ".TP\n\\fBGITOPS_COLLECTOR_CA_FILE\\fR\nextra CA bundle for an https URL\n"
            ".TP\n\\fBNO_COLOR\\fR\nno colour in tables"),
        "see also": "gitops\\-agent(1); /usr/share/doc/gitops\\-collector/",
    },
}
DESCRIPTION = {"gitops-collector": "collector, API, web UI and fleet queries for gitops-agent reports"}


def _parser(name: str) -> argparse.ArgumentParser:
    module, _, function = PARSERS[name].partition(":")
    parser: argparse.ArgumentParser = getattr(importlib.import_module(module), function)()
    return parser


def manpage(name: str, *, version: str, date: str) -> str:
    """The man page (roff) of `name`, section 1."""
    from argparse_manpage.manpage import Manpage

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"  # argparse wraps usage lines to the terminal: the same on every build
    try:
        page = Manpage(_parser(name), _data={"project_name": "gitops-agent", "version": version,
                                             "date": date, "manual_title": "gitops-agent manual",
                                             "description": DESCRIPTION.get(name, name)})
        for heading, content in SECTIONS.get(name, {}).items():
            page.add_section(heading, "=", content)
        return str(page)
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def completion(name: str, shell: str) -> str:
    import shtab

    text: str = shtab.complete(_parser(name), shell=shell)
    return text


def files(name: str, *, version: str, date: str) -> dict[str, bytes]:
    """Path under the package root -> content, for the man page and the bash and zsh completions."""
    man = io.BytesIO()
    with gzip.GzipFile(fileobj=man, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(manpage(name, version=version, date=date).encode())
    return {
        f"usr/share/man/man1/{name}.1.gz": man.getvalue(),
        f"usr/share/bash-completion/completions/{name}": completion(name, "bash").encode(),
        f"usr/share/zsh/vendor-completions/_{name}": completion(name, "zsh").encode(),
    }


def stage(stage_dir: Path, name: str, *, version: str, date: str) -> list[Path]:
    """Write them into a staging tree (mode 0644); returns the paths written."""
    written = []
    for rel, content in files(name, version=version, date=date).items():
        path = stage_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o644)
        written.append(path)
    return written


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    out = Path(sys.argv[2])
    for path in stage(out, sys.argv[1], version="dev", date="1970-01-01"):
        print(path)
