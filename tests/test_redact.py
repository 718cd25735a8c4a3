"""agent.redact: credentials out of URLs and error text; configurable patterns for report content."""

from __future__ import annotations

import pytest

from agent.errors import ConfigError
from agent.redact import MARKER, Redactor, redact_text, redact_url, url_secrets


@pytest.mark.parametrize(("url", "expected"), [
    ("https://user:tok@host/x", "https://***@host/x"),
    ("https://ghp_abcdef123456@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("http://u:p%40ss@host:8080/x", "http://***@host:8080/x"),
    ("https://u:p@ss@host/x", "https://***@host/x"),  # an unescaped @ in the password
    ("ssh://git@host/x.git", "ssh://git@host/x.git"),  # a bare ssh user is not a secret
    ("ssh://git:pw@host/x.git", "ssh://***@host/x.git"),
    ("git@github.com:o/r.git", "git@github.com:o/r.git"),
    ("https://host/x.git", "https://host/x.git"),
    ("/srv/git/fleet.git", "/srv/git/fleet.git"),
    ("https://host/r.git?private_token=abc123&ref=main", "https://host/r.git?private_token=***&ref=main"),
    ("https://host/r?X-Access_Token=abc", "https://host/r?X-Access_Token=abc"),
    ("https://host/r?ACCESS_TOKEN=abc", "https://host/r?ACCESS_TOKEN=***"),
])
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_url_secrets() -> None:
    assert url_secrets("https://bob:s3cr%40t@host/x") == ["s3cr%40t", "s3cr@t"]
    assert url_secrets("https://tokentoken@host/x") == ["tokentoken"]
    assert url_secrets("https://bob:pw@host/x") == []  # too short to search for on its own
    assert url_secrets("ssh://git@host/x") == []
    assert url_secrets("http://[::1") == []  # unparsable: nothing, no exception


def test_redact_text_scrubs_git_error_output() -> None:
    url = "https://bob:s3cr%40t@git.example.com/ops/fleet.git"
    stderr = (
        "Cloning into 'fleet'...\n"
        f"fatal: unable to access '{url}/': The requested URL returned error: 403\n"
        "remote: password s3cr@t rejected\n"
    )
    out = redact_text(stderr, [url, "https://mirror.example.com/fleet.git"])
    assert "s3cr" not in out and "bob" not in out
    assert "fatal: unable to access 'https://***@git.example.com/ops/fleet.git/'" in out
    assert "remote: password *** rejected" in out


def test_redact_text_without_urls_still_masks_embedded_urls() -> None:
    text = "fetch https://x:y@h/a failed; also see http://tokenvalue@h2/b and https://h3/c"
    assert redact_text(text) == "fetch https://***@h/a failed; also see http://***@h2/b and https://h3/c"


def test_redactor_whole_match_and_groups() -> None:
    r = Redactor([r"AKIA[0-9A-Z]{16}", r"password[=:]\s*(\S+)", r"(?P<user>db_user)=(\w+)"])
    text = "key AKIAABCDEFGHIJKLMNOP password: hunter2 db_user=admin"
    assert r(text) == f"key {MARKER} password: {MARKER} {MARKER}={MARKER}"
    assert r.redact("nothing here") == "nothing here"
    assert r.redact_optional(None) is None


def test_redactor_nested_and_optional_groups() -> None:
    r = Redactor([r"tok=((ab)cd)", r"x=(1)?(2)?"], marker="#")
    assert r("tok=abcd") == "tok=#"
    assert r("x=2 x=1 x=") == "x=# x=# #"  # a match whose groups matched nothing is masked whole


def test_redactor_ignores_empty_matches_and_masks_urls() -> None:
    r = Redactor([r"z*"])
    assert r("abc https://u:p@h/x") == "abc https://***@h/x"
    assert Redactor([], urls=False)("https://u:p@h/x") == "https://u:p@h/x"


def test_redactor_bad_pattern_names_its_index() -> None:
    with pytest.raises(ConfigError, match=r"redact\[1\]: invalid regular expression '\('"):
        Redactor(["ok", "("])
