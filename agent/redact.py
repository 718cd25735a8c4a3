"""Keeping credentials and configured secrets out of logs, errors and reports. Pure: strings in, strings out.

- ``redact_url``: the credentials in a URL's user-info, and token-like query parameters, become ``***``.
- ``redact_text``: the same for every URL inside free text (git's error output echoes the URL it used), plus
  the secrets of the URLs the caller passes, wherever they appear on their own.
- ``Redactor``: configurable regexes (``redact: [regex, ...]``); each match becomes ``[REDACTED]``; and
  known secret values (Ansible Vault plaintexts), each occurrence of which becomes ``[REDACTED: vault]``.
- ``redact_report``: a Report with every free-text field passed through a Redactor.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from agent.errors import ConfigError
from agent.report import Report

MARKER = "[REDACTED]"
VAULT_MARKER = "[REDACTED: vault]"
# Identifiers, not content: never passed through patterns (a pattern must not break a run id or a commit).
KEEP_FIELDS = frozenset({"run_id", "host", "agent_version", "commit", "previous_commit", "role", "module"})
T = TypeVar("T")
URL_MASK = "***"
MIN_SECRET_LEN = 4  # shorter secrets are not searched for on their own (they would hit ordinary words)
TOKEN_PARAMS = ("token", "access_token", "private_token", "password", "passwd", "secret", "key", "sig",
                "signature", "auth", "api_key", "apikey", "client_secret")
_TOKEN_USER_SCHEMES = ("http", "https", "ftp", "ftps")

# scheme://userinfo@ -- userinfo runs to the last @ before the host, never across whitespace, / or quotes.
_NOT_IN_USERINFO = r"[^\s/?#@'\"<>]+"
_USERINFO = re.compile(
    rf"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>{_NOT_IN_USERINFO}(?:@{_NOT_IN_USERINFO})*)@")
_QUERY_TOKEN = re.compile(
    rf"(?P<name>[?&;](?:{'|'.join(re.escape(p) for p in TOKEN_PARAMS)})=)(?P<value>[^&#\s'\"<>]+)",
    re.IGNORECASE)


def redact_url(url: str) -> str:
    """https://user:tok@host/x -> https://***@host/x; ?access_token=abc -> ?access_token=***.

    A bare user name is kept where it is not a secret (ssh://git@host/x); over http(s) a user-info without a
    password is usually a token (https://TOKEN@host/x), so it is masked too.
    """
    text = _USERINFO.sub(_mask_userinfo, url)
    return _QUERY_TOKEN.sub(lambda m: m.group("name") + URL_MASK, text)


def _mask_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group("scheme"), match.group("userinfo")
    if ":" in userinfo or scheme[:-3].lower() in _TOKEN_USER_SCHEMES:
        return f"{scheme}{URL_MASK}@"
    return match.group(0)


def url_secrets(url: str) -> list[str]:
    """The secret parts of one URL (password, or a token used as the user name), raw and percent-decoded."""
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return []
    if password:
        found = [password]
    elif username and parts.scheme.lower() in _TOKEN_USER_SCHEMES:
        found = [username]
    else:
        found = []
    found += [unquote(s) for s in found]
    return sorted({s for s in found if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)


def redact_text(text: str, urls: Iterable[str] = ()) -> str:
    """Scrub credentials from free text such as git's error output.

    Every URL in `text` has its user-info masked (see redact_url); then every secret of the given `urls`
    (the configured source and mirrors) is masked wherever it still appears, e.g. echoed on its own.
    """
    result = redact_url(text)
    for url in urls:
        for secret in url_secrets(url):
            result = result.replace(secret, URL_MASK)
    return result


class Redactor:
    """Applies configured regexes to strings; each match becomes `marker`.

    A pattern without groups masks its whole match; a pattern with groups masks only what the groups matched
    (``password=(\\S+)`` keeps ``password=``). Empty matches are ignored. URL credentials are masked too.
    """

    def __init__(self, patterns: Sequence[str], *, marker: str = MARKER, urls: bool = True,
                 secrets: Iterable[str] = ()) -> None:
        literals = sorted({v for s in secrets for v in secret_variants(s)}, key=len, reverse=True)
        self.secrets = re.compile("|".join(re.escape(v) for v in literals)) if literals else None
        compiled = []
        for i, pattern in enumerate(patterns):
            try:
                compiled.append(re.compile(pattern))
            except re.error as e:
                raise ConfigError(f"redact[{i}]: invalid regular expression {pattern!r} ({e})") from e
        self.patterns: tuple[re.Pattern[str], ...] = tuple(compiled)
        self.marker = marker
        self.urls = urls

    def __call__(self, text: str) -> str:
        return self.redact(text)

    def redact(self, text: str) -> str:
        result = self.secrets.sub(VAULT_MARKER, text) if self.secrets else text  # before patterns cut one
        result = redact_url(result) if self.urls else result
        for pattern in self.patterns:
            result = pattern.sub(self._replace, result)
        return result

    def redact_optional(self, text: str | None) -> str | None:
        return None if text is None else self.redact(text)

    def _replace(self, match: re.Match[str]) -> str:
        groups = [g for g in range(1, match.re.groups + 1) if match.start(g) < match.end(g)]
        spans = sorted((match.span(g) for g in groups), key=lambda span: (span[0], -span[1]))
        if not spans:  # no groups (or none matched): the whole match; an empty match stays empty
            return self.marker if match.group(0) else ""
        pieces, cursor = [], match.start()
        for start, end in spans:
            if start < cursor:  # nested in (or overlapping) a group already masked
                continue
            pieces += [match.string[cursor:start], self.marker]
            cursor = end
        pieces.append(match.string[cursor:match.end()])
        return "".join(pieces)


def secret_variants(value: str) -> set[str]:
    """The forms in which a secret value can show up in a report: as it is, stripped, JSON-escaped (diffs of
    structured values), and line by line when it spans lines (a key file re-indented by a template).
    Pieces shorter than MIN_SECRET_LEN are left out: they would mask ordinary words and numbers."""
    forms = {value, value.strip(), json.dumps(value)[1:-1]}
    if "\n" in value.strip():
        forms.update(line.strip() for line in value.splitlines())
    return {f for f in forms if len(f) >= MIN_SECRET_LEN}


def redact_record(record: T, redact: Callable[[str], str]) -> T:
    """A copy of a frozen dataclass (nested dataclasses, tuples) with every text field passed through
    `redact`; enums, numbers, times and the identifiers in KEEP_FIELDS are kept as they are."""
    return _redacted(record, redact)  # type: ignore[no-any-return]


def redact_report(report: Report, redact: Callable[[str], str]) -> Report:
    """The report as it may be written and sent: configured patterns and known secrets replaced."""
    return redact_record(report, redact)


def _redacted(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, enum.Enum):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, tuple):
        return tuple(_redacted(v, redact) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{
            f.name: _redacted(getattr(value, f.name), redact)
            for f in dataclasses.fields(value) if f.name not in KEEP_FIELDS and f.init})
    return value
