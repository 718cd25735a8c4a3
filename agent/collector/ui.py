"""The web UI: server-rendered pages over the same queries as the API (each page names its JSON twin).

Pages need a reader (session cookie, bearer token or trusted proxy header); without one they redirect to
/login. Everything from reports is untrusted: templates autoescape, and the CSP forbids inline code.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent.collector import compliance_charts, params, queries, rollout_api, ui_auth, ui_queries
from agent.collector.auth import Role
from agent.collector.errors import CollectorError, DatabaseError, ForbiddenError
from agent.collector.queries import HostFilter, Page
from agent.collector.ui_render import SECURITY_HEADERS, render_page, run_strip

if TYPE_CHECKING:
    from agent.collector.context import Collector

PAGE_SIZE = params.UI_PAGE_SIZE
STRIP_RUNS = 60
Handler = Callable[[Request, "Collector"], Awaitable[Response]]
STATIC_TYPES = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8",
                "favicon.svg": "image/svg+xml"}


def ui_page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Authenticate the reader (else redirect to /login) and render collector errors as a page."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        collector: Collector = request.app.state.collector
        try:
            principal = await collector.db(ui_auth.page_reader, collector, request)
            if principal is None:
                return ui_auth.login_redirect(request)
            request.state.reader = principal.name
            request.state.review = ui_auth.review_token(collector, request, principal)
            request.state.operator = ui_auth.has_page_role(collector, request, principal, Role.OPERATOR)
            return await handler(request, collector)
        except (DatabaseError, ForbiddenError):
            raise
        except CollectorError as e:
            return render_page("error.html", e.status, message=str(e), **common(request, collector))

    return wrapped


def common(request: Request, collector: Collector) -> dict[str, Any]:
    def link(**changes: Any) -> str:
        """This page's URL with some query parameters changed (None removes one)."""
        params = dict(request.query_params)
        params.update({k: str(v) for k, v in changes.items() if v is not None})
        for key in [k for k, v in changes.items() if v is None]:
            params.pop(key, None)
        params = {k: v for k, v in params.items() if v != ""}
        return request.url.path + (f"?{urlencode(params)}" if params else "")

    return {"now": collector.now(), "link": link, "path": request.url.path,
            "reader": getattr(request.state, "reader", None),
            "review": getattr(request.state, "review", None)}


def page_params(request: Request, size: int = PAGE_SIZE) -> Page:
    return params.page(request.query_params, size)


@ui_page
async def overview(request: Request, collector: Collector) -> Response:
    f, pg = params.host_filter(request.query_params, collector.now()), page_params(request)
    stale_before = collector.stale_before()
    listing = await collector.db(queries.list_hosts, collector.engine, f, pg, stale_before=stale_before)
    counts = await collector.db(queries.status_counts, collector.engine, stale_before=stale_before)
    seen = request.query_params.get("seen", "")
    return render_page("overview.html", counts=counts, hosts=listing, page=pg, f=f, seen=seen,
                       api="/api/v1/hosts" + (f"?{request.url.query}" if request.url.query else ""),
                       **common(request, collector))


@ui_page
async def stale(request: Request, collector: Collector) -> Response:
    pg, stale_before = page_params(request), collector.stale_before()
    f = HostFilter(stale=True, sort="last_seen", search=params.text(request.query_params, "q"))
    listing = await collector.db(queries.list_hosts, collector.engine, f, pg, stale_before=stale_before)
    return render_page("stale.html", hosts=listing, page=pg, api="/api/v1/hosts?stale=true&sort=last_seen",
                       **common(request, collector))


@ui_page
async def host(request: Request, collector: Collector) -> Response:
    name = request.path_params["host"]
    state = await collector.db(queries.get_host, collector.engine, name,
                               stale_before=collector.stale_before(), now=collector.now())
    runs = await collector.db(queries.host_runs, collector.engine, name, Page(limit=STRIP_RUNS))
    last = await collector.db(queries.get_run, collector.engine, state["last_run_id"])
    commit = await collector.db(ui_queries.commit_info, collector.engine, state["commit"])
    compliance = await compliance_charts.host_panel(collector, name)
    return render_page("host.html", host=state, compliance=compliance, runs=runs.items[:15],
                       total_runs=runs.total,
                       strip=run_strip(runs.items), last=last, report=last["report"], commit=commit,
                       api=f"/api/v1/hosts/{name}", **common(request, collector))


@ui_page
async def run(request: Request, collector: Collector) -> Response:
    run_id = request.path_params["run_id"]
    item = await collector.db(queries.get_run, collector.engine, run_id)
    commit = await collector.db(ui_queries.commit_info, collector.engine, item["commit"])
    return render_page("run.html", run=item, report=item["report"], commit=commit,
                       api=f"/api/v1/runs/{run_id}", **common(request, collector))


@ui_page
async def drift(request: Request, collector: Collector) -> Response:
    pg, filters = page_params(request), params.drift_filters(request.query_params)
    api = "/api/v1/drift" + (f"?{request.url.query}" if request.url.query else "")
    if filters["task"] is not None:
        items = await collector.db(queries.drift_items_now, collector.engine, pg, now=collector.now(),
                                   **filters)
        roles = [str(filters["role"])] if filters["role"] else [str(i["role"]) for i in items.items]
        compliance = await compliance_charts.task_panels(collector, str(filters["task"]), roles)
        return render_page("drift_task.html", task=filters["task"], items=items, page=pg, filters=filters,
                           compliance=compliance,
                           groups=diff_groups(items.items), api=api + "&group=host",
                           **common(request, collector))
    tasks = await collector.db(queries.drift_by_task, collector.engine, pg, now=collector.now(), **filters)
    return render_page("drift.html", tasks=tasks, page=pg, filters=filters, api=api,
                       **common(request, collector))


def diff_groups(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Current items of one task grouped by identical diff ("11 hosts, same diff"), largest group first;
    items without a diff form one group."""
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(item.get("diff_sha256"), []).append(item)
    out = [{"diff": d, "items": members, "hosts": len({m["host"] for m in members})}
           for d, members in groups.items()]
    return sorted(out, key=lambda g: (-g["hosts"], g["diff"] is None, g["diff"] or ""))


@ui_page
async def commit(request: Request, collector: Collector) -> Response:
    sha, pg = request.path_params["sha"], page_params(request)
    reached = params.rollout_hosts(request.query_params)
    result = await collector.db(queries.commit_rollout, collector.engine, sha, pg,
                                stale_before=collector.stale_before(), reached=reached == "running")
    # The commit page is the rollout control when hosts reported a rollout.yml for this commit.
    control = await rollout_api.control(collector, result["commit"]["sha"], request.state.operator,
                                        ui_auth.form_token(request) if request.state.operator else None)
    return render_page("commit.html", commit=result["commit"], summary=result["summary"],
                       hosts=result["hosts"], page=pg, reached=reached, control=control,
                       api=f"/api/v1/commits/{sha}?hosts={reached}", **common(request, collector))


@ui_page
async def commits(request: Request, collector: Collector) -> Response:
    pg = page_params(request)
    listing = await collector.db(queries.list_commits, collector.engine, pg)
    return render_page("commits.html", commits=listing, page=pg, api="/api/v1/commits",
                       **common(request, collector))


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_TYPES:
        return Response("not found", 404, media_type="text/plain", headers=SECURITY_HEADERS)
    body = (resources.files("agent.collector") / "static" / name).read_bytes()
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"}
    return Response(body, media_type=STATIC_TYPES[name], headers=headers)


ROUTES = [
    Route("/", overview),
    Route("/stale", stale),
    Route("/hosts/{host:path}", host),
    Route("/runs/{run_id}", run),
    Route("/drift", drift),
    Route("/commits", commits),
    Route("/commits/{sha}", commit),
    Route("/login", ui_auth.login_form, methods=["GET"]),
    Route("/login", ui_auth.login_submit, methods=["POST"]),
    Route("/logout", ui_auth.logout, methods=["POST"]),
    Route("/static/{name}", static),
]
