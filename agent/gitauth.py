"""How git authenticates to the sources, without a secret on a command line, in a URL, in the cache
repository's config or in a log line.

HTTPS: `source.credentials_file` holds lines in git's credential-store format
(`https://USER:TOKEN@HOST[:PORT]`, percent-encoded). Git is given a credential helper, this module run as
`python -m agent.gitauth FILE`, which answers git's `get` request with the matching line's user and
token over a pipe and ignores `store` and `erase` (the file is the operator's, never rewritten).

SSH: `source.ssh_key` and `source.known_hosts` become GIT_SSH_COMMAND options: only that key, and only
host keys pinned in that file (an unknown or changed host key is refused, never learned).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from agent.config import SourceConfig

DEFAULT_SSH = "ssh -o BatchMode=yes"


def git_options(config: SourceConfig) -> list[str]:
    """`-c` options before the git subcommand: only our helper, and only when a file is configured."""
    if config.credentials_file is None:
        return []
    helper = shlex.join([sys.executable, "-m", "agent.gitauth", str(config.credentials_file)])
    return ["-c", "credential.helper=", "-c", f"credential.helper=!{helper}"]


def ssh_command(config: SourceConfig, inherited: str | None) -> str:
    """GIT_SSH_COMMAND: batch mode always; the pinned key and known_hosts when configured."""
    if config.ssh_key is None and config.known_hosts is None:
        return inherited or DEFAULT_SSH
    args = ["ssh", "-o", "BatchMode=yes"]
    if config.ssh_key is not None:
        args += ["-i", str(config.ssh_key), "-o", "IdentitiesOnly=yes"]
    if config.known_hosts is not None:
        args += ["-o", f"UserKnownHostsFile={config.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                 "-o", "StrictHostKeyChecking=yes"]
    return shlex.join(args)


def git_env(config: SourceConfig, environ: Mapping[str, str]) -> dict[str, str]:
    return {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "",
            "GIT_SSH_COMMAND": ssh_command(config, environ.get("GIT_SSH_COMMAND"))}


def _request(text: str) -> dict[str, str]:
    fields = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in fields.items()}


def lookup(lines: str, request: Mapping[str, str]) -> tuple[str, str] | None:
    """The (user, token) of the first line for the request's protocol and host[:port]."""
    for line in lines.splitlines():
        try:
            parts = urlsplit(line.strip())
            port = parts.port
        except ValueError:  # not a URL (e.g. a bad port): skip the line, as git's own store does
            continue
        if not parts.scheme or parts.password is None or parts.hostname is None:
            continue
        host = parts.hostname + (f":{port}" if port else "")
        if parts.scheme == request.get("protocol") and host == request.get("host", "").lower():
            return unquote(parts.username or ""), unquote(parts.password)
    return None


def main(argv: list[str]) -> int:
    """git credential helper: `FILE get` prints username= and password=; anything else does nothing."""
    if len(argv) != 2 or argv[1] != "get":
        return 0
    request = _request(sys.stdin.read())
    try:
        found = lookup(Path(argv[0]).read_text(encoding="utf-8"), request)
    except OSError as e:
        print(f"gitops-agent credential helper: cannot read {argv[0]} ({e.strerror})", file=sys.stderr)
        return 1
    if found is not None:
        sys.stdout.write(f"username={found[0]}\npassword={found[1]}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
