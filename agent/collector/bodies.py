"""Request bodies, read the same way by every endpoint that takes one.

- `read_body(request, limit)`: the bytes, at most `limit` of them; TooLargeError (413) when the declared
  Content-Length or the bytes that arrive go over it, BadRequestError (400) for a Content-Length that is
  not a whole number.
- `read_json_object(request, limit)`: the body as a JSON object (dict); BadRequestError (400) naming why
  when it is not JSON or not an object.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from agent.collector.errors import BadRequestError, TooLargeError


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body (bytes), refused once it goes over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequestError("Content-Length: expected a whole number of bytes")
        if len(declared) > 18 or int(declared) > limit:
            raise TooLargeError(f"body of {declared[:20]} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(request: Request, limit: int, *, empty_is_object: bool = False) -> dict[str, Any]:
    """The body as a JSON object; an empty body is {} when `empty_is_object`, else not JSON."""
    body = await read_body(request, limit)
    if empty_is_object and not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequestError(f"body: not JSON ({e})") from e
    if not isinstance(data, dict):
        raise BadRequestError("body: expected a JSON object")
    return data
