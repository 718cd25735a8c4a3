"""app.CollectorApp's shortcut: `POST /api/v1/reports` goes straight to api.post_report, past Starlette's
router and error middlewares. Differential: every answer equals the one Starlette itself gives for the
same request (Starlette.__call__ on the same app), for each kind of answer the endpoint has."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import DataError, OperationalError
from starlette.applications import Starlette

from agent.collector import api
from agent.collector.app import CollectorApp, create_app
from agent.collector.context import Collector, CollectorSettings
from agent.report import to_json
from tests.factory import make_report

HOST = "web01.example.com"


@pytest.fixture
def settings() -> CollectorSettings:
    return CollectorSettings(max_body_bytes=64 * 1024)


class Twin:
    """The same app reached two ways: through its shortcut, and through Starlette as built."""

    def __init__(self, app: CollectorApp) -> None:
        async def through_starlette(scope: Any, receive: Any, send: Any) -> None:
            await Starlette.__call__(app, scope, receive, send)

        self.app = app
        self.runner = asyncio.Runner()
        self.clients = {
            name: httpx.AsyncClient(transport=httpx.ASGITransport(app=target, raise_app_exceptions=False),
                                    base_url="http://collector.test")
            for name, target in (("shortcut", app), ("starlette", through_starlette))}

    def both(self, method: str, url: str, **kwargs: Any) -> dict[str, httpx.Response]:
        return {name: self.runner.run(client.request(method, url, **kwargs))
                for name, client in self.clients.items()}

    def close(self) -> None:
        for client in self.clients.values():
            self.runner.run(client.aclose())
        self.runner.close()


@pytest.fixture
def twin(collector: Collector) -> Iterator[Twin]:
    app = create_app(collector)
    assert isinstance(app, CollectorApp)
    t = Twin(app)
    yield t
    t.close()


def same(answers: dict[str, httpx.Response]) -> httpx.Response:
    shortcut, starlette = answers["shortcut"], answers["starlette"]
    assert (shortcut.status_code, shortcut.content) == (starlette.status_code, starlette.content)
    assert dict(shortcut.headers) == dict(starlette.headers)
    return shortcut


def post(twin: Twin, body: bytes | str, token: str | None, **headers: str) -> httpx.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return same(twin.both("POST", "/api/v1/reports", content=body,
                          headers={"Content-Type": "application/json", **headers}))


def test_every_kind_of_answer_is_the_one_starlette_gives(twin: Twin, token_for: Callable[[str], str]) -> None:
    token, report = token_for(HOST), make_report(HOST)
    first = twin.clients["shortcut"]
    created = twin.runner.run(first.post("/api/v1/reports", content=to_json(report),
                                         headers={"Authorization": f"Bearer {token}"}))
    assert created.status_code == 201
    assert post(twin, to_json(report), token).status_code == 200  # duplicate, both ways
    assert post(twin, to_json(report), None).status_code == 401
    assert "Bearer" in post(twin, to_json(report), "not-a-token").headers["www-authenticate"]
    assert post(twin, b"{not json", token).status_code == 422
    assert post(twin, b'{"a": 1, "a": 2}', token).status_code == 422
    assert post(twin, to_json(dataclasses.replace(report, host="other.example.com")), token).status_code == 403
    assert post(twin, b" " * (65 * 1024), token).status_code == 413
    other = dataclasses.replace(report, agent_version="0.1.1")
    assert post(twin, to_json(other), token).status_code == 409  # the same run_id, another body
    # other methods, and paths near it, are Starlette's: 405, 404, the redirect of a trailing slash
    assert same(twin.both("GET", "/api/v1/reports")).status_code == 405
    assert same(twin.both("PUT", "/api/v1/reports", content=b"{}")).status_code == 405
    assert same(twin.both("POST", "/api/v1/reports/", content=b"{}")).status_code in (307, 404)
    assert same(twin.both("POST", "/api/v1/REPORTS", content=b"{}")).status_code == 404


@pytest.mark.parametrize("error", [
    DataError("INSERT", {}, Exception("value too long")),  # the handler of the most specific class
    OperationalError("INSERT", {}, Exception("database is locked")),  # a subclass's handler, by the MRO
    RuntimeError("a bug"),  # no handler: a plain 500, then raised for the server's log
])
def test_an_exception_is_answered_by_the_handler_starlette_would_choose(
        twin: Twin, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    async def failing(request: Any) -> Any:
        raise error

    monkeypatch.setattr(api, "post_report", failing)
    answers = {"shortcut": twin.runner.run(twin.clients["shortcut"].post("/api/v1/reports", content=b"{}"))}
    # Starlette's own route still holds the real endpoint: the same exception raised from a route it runs
    app = twin.app
    route = next(r for r in app.routes if getattr(r, "path", None) == "/api/v1/reports")
    monkeypatch.setattr(route, "app", _raising_asgi(error))
    answers["starlette"] = twin.runner.run(twin.clients["starlette"].post("/api/v1/reports", content=b"{}"))
    answer = same(answers)
    assert answer.status_code == {DataError: 422, OperationalError: 503, RuntimeError: 500}[type(error)]


def _raising_asgi(error: Exception) -> Any:
    from starlette.requests import Request
    from starlette.routing import request_response

    async def endpoint(request: Request) -> Any:
        raise error

    return request_response(endpoint)


def test_an_unhandled_exception_is_raised_after_its_500(twin: Twin, collector: Collector,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    async def failing(request: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api, "post_report", failing)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(collector)),
                               base_url="http://collector.test")
    with pytest.raises(RuntimeError, match="a bug"):
        twin.runner.run(client.post("/api/v1/reports", content=b"{}"))
    twin.runner.run(client.aclose())


def test_a_root_path_sends_the_request_through_starlette(collector: Collector,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(collector)
    taken: list[str] = []

    async def starlette_call(self: Starlette, scope: Any, receive: Any, send: Any) -> None:
        taken.append(scope["path"])
        await original(self, scope, receive, send)

    original = Starlette.__call__
    monkeypatch.setattr(Starlette, "__call__", starlette_call)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, root_path="/collector"),
                               base_url="http://collector.test")
    runner = asyncio.Runner()
    answer = runner.run(client.post("/collector/api/v1/reports", content=b"{}"))
    runner.run(client.aclose())
    runner.close()
    assert taken == ["/collector/api/v1/reports"] and answer.status_code == 401


def test_a_handler_that_fails_is_answered_500_as_starlette_does(twin: Twin,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    app = twin.app

    async def failing(request: Any) -> Any:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    async def broken_handler(request: Any, exc: Exception) -> Any:
        raise RuntimeError("the handler failed")

    monkeypatch.setattr(api, "post_report", failing)
    route = next(r for r in app.routes if getattr(r, "path", None) == "/api/v1/reports")
    monkeypatch.setattr(route, "app", _raising_asgi(OperationalError("INSERT", {}, Exception("locked"))))
    from sqlalchemy.exc import SQLAlchemyError
    monkeypatch.setitem(app.exception_handlers, SQLAlchemyError, broken_handler)
    app.middleware_stack = None  # Starlette builds it again with the handler
    answer = same(twin.both("POST", "/api/v1/reports", content=b"{}"))
    assert answer.status_code == 500 and answer.text == "Internal Server Error"
