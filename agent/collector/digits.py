"""Numbers in query strings, headers and command arguments: ASCII digits only, bounded in length before
conversion.

`str.isdigit()` is true for "²", which int() then cannot convert, and int() of a 5,000-digit string
raises: both were a 500. int() also reads "٣" (Arabic-Indic three) as 3, one more spelling than the API
documents. Here all of them are simply "not a whole number", which the callers turn into an error naming
the parameter.
"""

from __future__ import annotations

import re

_WHOLE = re.compile(r"[0-9]{1,18}")  # 18 digits: below 2**63, so int() is cheap and exact


def whole_number(text: str) -> int | None:
    """'42' -> 42; anything but 1 to 18 ASCII digits (a sign, a space, '²', '٣', 5,000 digits) -> None."""
    return int(text) if _WHOLE.fullmatch(text) else None
