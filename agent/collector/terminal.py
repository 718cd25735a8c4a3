"""Text from a report or the database, made safe to print to a terminal."""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every character that is not printable escaped as Python writes it in a string literal
    (\\x1b, \\n, \\u200b...): what reports hold, and what a shared database holds, is untrusted, and a
    terminal obeys the escape sequences in a host name, a task name or a token's kind."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
