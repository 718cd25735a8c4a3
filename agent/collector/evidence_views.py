"""The evidence export over HTTP (docs/drift-review.md section 7): the bundle as a stream, its printable
summary page, and the signing key's public half.

- `GET /api/v1/evidence?from=&to=&scope=fleet|role:NAME|host:NAME&format=jsonl|csv|summary` (reader
  token): the ZIP bundle (agent.collector.evidence), or `summary` as JSON;
- `GET /api/v1/evidence/key`: the `allowed_signers` line of the collector's signing key (404 without one);
- `/drift/evidence` (signed-in readers): the form and, with `from`, the printable summary and the download
  links; `/drift/evidence/export` is the download for the session.

Who may export: any reader (and reviewer), not ingest tokens. Everything in the bundle is what a reader
can already read through the API; an auditor needs to read and must not need the power to accept drift.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from agent.collector import evidence, params
from agent.collector.auth import reader_principal
from agent.collector.errors import BadRequestError, NotFoundError
from agent.collector.ui import common, ui_page
from agent.collector.ui_render import SECURITY_HEADERS, render_page

if TYPE_CHECKING:
    from agent.collector.context import Collector

API_FORMATS = ("jsonl", "csv", "summary")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _collector(request: Request) -> Collector:
    collector: Collector = request.app.state.collector
    return collector


def once(q: QueryParams) -> None:
    """BadRequestError when a parameter that defines the export is given twice (`from=..&from=..`): which
    one was meant cannot be told, and an auditor must get the range and scope they asked for."""
    for name in ("from", "to", "scope", "format"):
        given = q.getlist(name)
        if len(given) > 1:
            raise BadRequestError(f"{name}: given {len(given)} times; give it once")


async def _export(request: Request, collector: Collector) -> evidence.Export:
    q = request.query_params
    once(q)
    req = evidence.parse_request(q.get("from"), q.get("to"), q.get("scope"), now=collector.now())
    await collector.db(evidence.check_scope, collector.engine, req.scope)
    return req


def filename(req: evidence.Export, fmt: str) -> str:
    """`evidence-SCOPE-FROM-TO-FORMAT.zip`, safe in a Content-Disposition header and on any disk."""
    parts = [str(req.scope), req.start.strftime("%Y%m%dT%H%M%SZ"), req.end.strftime("%Y%m%dT%H%M%SZ"), fmt]
    return _UNSAFE.sub("_", "evidence-" + "-".join(parts))[:200] + ".zip"


def stream(collector: Collector, req: evidence.Export, fmt: str) -> StreamingResponse:
    """The bundle as a streamed response: each chunk is made in a database worker thread."""
    key = collector.settings.evidence_key

    async def body() -> AsyncIterator[bytes]:
        chunks: Iterator[bytes] = evidence.bundle_chunks(collector.engine, req, fmt, key)
        while True:
            chunk = await collector.db(next, chunks, None)
            if chunk is None:
                return
            if chunk:
                yield chunk

    headers = {"Content-Disposition": f'attachment; filename="{filename(req, fmt)}"', **SECURITY_HEADERS}
    return StreamingResponse(body(), media_type="application/zip", headers=headers)


async def api_evidence(request: Request) -> Response:
    collector = _collector(request)
    await collector.db(reader_principal, collector.engine, request, collector.settings.proxy)
    fmt = params.choice(request.query_params, "format", API_FORMATS, "jsonl") or "jsonl"
    req = await _export(request, collector)
    if fmt == "summary":
        return JSONResponse(await collector.db(evidence.summary, collector.engine, req))
    return stream(collector, req, fmt)


async def api_key(request: Request) -> Response:
    collector = _collector(request)
    await collector.db(reader_principal, collector.engine, request, collector.settings.proxy)
    key = collector.settings.evidence_key
    if key is None:
        raise NotFoundError("this collector has no evidence signing key (serve --evidence-key FILE)")
    return PlainTextResponse(key.allowed_signers + "\n")


@ui_page
async def ui_evidence(request: Request, collector: Collector) -> Response:
    """The form; with `from`, the printable summary of that export and its download links."""
    q = request.query_params
    summary = req = None
    if q.get("from"):
        req = await _export(request, collector)
        summary = await collector.db(evidence.summary, collector.engine, req)
    key = collector.settings.evidence_key
    return render_page("evidence.html", summary=summary, q=dict(q), query=request.url.query,
                       key=key.allowed_signers if key else None, namespace=evidence.NAMESPACE,
                       api=f"/api/v1/evidence?{request.url.query}&format=summary" if req else None,
                       **common(request, collector))


@ui_page
async def ui_evidence_export(request: Request, collector: Collector) -> Response:
    fmt = params.choice(request.query_params, "format", evidence.FORMATS, "jsonl") or "jsonl"
    req = await _export(request, collector)
    return stream(collector, req, fmt)


API_ROUTES = [
    Route("/api/v1/evidence", api_evidence),
    Route("/api/v1/evidence/key", api_key),
]
PAGE_ROUTES = [
    Route("/drift/evidence", ui_evidence),
    Route("/drift/evidence/export", ui_evidence_export),
]
__all__ = ["API_ROUTES", "PAGE_ROUTES", "filename", "stream"]
