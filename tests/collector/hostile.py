"""Hostile shapes that once gave the collector a 5xx, a frozen host or an unreachable one (issue 15).

The API tests take each of them as a case, and the fuzzers (test_fuzz_ingest.py, test_fuzz_openapi.py)
draw from the same lists, so a new shape added here is asked of both.
"""

from __future__ import annotations

# Encodings other than UTF-8: json.loads guesses UTF-16/32 from the first bytes, after the depth check
# read them as UTF-8 (a deep UTF-16 body hit RecursionError).
ENCODINGS = ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "utf-8-sig", "latin-1",
             "cp1252")

# Numbers beyond what a report field can hold: float() of a 400-digit integer raised OverflowError.
EXTREME_NUMBERS = ("9" * 400, "-" + "9" * 400, "9" * 5000, str(2**63), str(-(2**63) - 1), "1e400",
                   "-1e400", "1e-400", "-0", "0.0000000000000000000000001", "123456789012345678901234567890.5")

# Times at the edges of datetime: astimezone(UTC) of the first two raised OverflowError; the next ones are
# valid but far from now (the 2099 report froze its host); the last ones are not times.
EXTREME_TIMES = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z",
                 "9999-12-31T23:59:59Z", "2099-01-01T00:00:00Z", "1970-01-01T00:00:00Z",
                 "1999-12-31T23:59:59Z", "2026-11-20T12:00:00+23:59", "2026-02-30T00:00:00Z",
                 "2026-11-20T24:00:00Z", "\uff12\uff10\uff12\uff16-11-20T12:00:00Z", "")

# Digits that str.isdigit() accepts and int() refuses or cannot convert, and numbers too long for int().
# superscript two and three, superscript one zero, Arabic-Indic three, Devanagari zero, fullwidth one zero,
# mathematical bold nine
UNICODE_DIGITS = ("\u00b2", "\u00b3", "\u00b9\u2070", "\u0663", "\u0966", "\uff11\uff10", "\U0001d7d7",
                  "9" * 5000, "-1", "+1", " 1", "1 ", "0x10", "1e3")

# Host names that cannot be one segment of a URL path, or need escaping in every link.
BAD_HOST_NAMES = ("a/b", "x/runs", ".", "..", ".hidden", "web01.", "a..b", "-web", "web 01", "web%2F01",
                  "web?x", "web#x", "wéb01", "web01\n", "<!channel>", "", "h" * 254)
GOOD_HOST_NAMES = ("web01", "web01.example.com", "db_01.dc-2.example.com", "10.0.0.7", "2001:db8::7",
                   "WEB01", "a" * 253)
