"""Small reads the web UI needs beyond the API's queries (kept apart so the query module stays the API's)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from agent.collector.tables import commits
from agent.report import format_time


def commit_info(engine: Engine, sha: str | None) -> dict[str, Any] | None:
    """Author, subject and signature of a commit some host reported, or None."""
    if not sha:
        return None
    with engine.connect() as conn:
        row = conn.execute(select(commits).where(commits.c.sha == sha)).first()
    if row is None:
        return None
    return {k: format_time(v) if hasattr(v, "isoformat") else v for k, v in row._mapping.items()}
