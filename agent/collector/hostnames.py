"""Which host names the collector accepts: a DNS-like name or an Ansible inventory hostname that can be
one segment of a URL path, as it is in /hosts/{host} and /api/v1/hosts/{host}[/runs].

Refused at `token create HOST` and at ingest, with this rule in the message: a "/" would split the path
(/api/v1/hosts/a/b is not host "a/b", and "x/runs" would read host x's runs), browsers and proxies
rewrite "." and ".." segments, and "%", "?", "#" or spaces would need escaping in every link.
"""

from __future__ import annotations

import re

MAX_HOST_CHARS = 253  # the longest DNS name
HOST_NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9_:-]|\.[A-Za-z0-9_:-])*$"
HOST_NAME_RULE = (f"1 to {MAX_HOST_CHARS} characters: ASCII letters, digits, '-', '_', ':' and single dots; "
                  "starting with a letter or digit and not ending with a dot")
_HOST_NAME = re.compile(HOST_NAME_PATTERN)


def host_name_problem(name: str) -> str | None:
    """None for an acceptable host name, else one line saying what is wrong and what the rule is."""
    if len(name) > MAX_HOST_CHARS:
        return f"longer than {MAX_HOST_CHARS} characters"
    if not _HOST_NAME.fullmatch(name):  # fullmatch: "$" alone would let a trailing newline through
        return f"{name[:60]!r} is not a host name ({HOST_NAME_RULE})"
    return None
