"""The OpenAPI 3.1 document served at /api/v1/openapi.json (written by hand, tested against the routes)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

import agent
from agent.collector.hostnames import HOST_NAME_PATTERN, HOST_NAME_RULE, MAX_HOST_CHARS
from agent.collector.params import (
    API_PAGE_SIZE,
    DELIVERY_STATUSES,
    DRIFT_KINDS,
    HOST_STATUSES,
    MAX_LIMIT,
    MAX_OFFSET,
    RUN_STATUSES,
    STALE,
)
from agent.collector.queries import HOST_SORTS, SEEN_WINDOWS_S

PAGE_PARAMS = [
    {"name": "limit", "in": "query",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": API_PAGE_SIZE}},
    {"name": "offset", "in": "query",
     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}},
]


# A free-text parameter: any text but NUL, which no stored value holds (agent.collector.params.text: 400).
TEXT = {"type": "string", "pattern": "^[^\\x00]*$"}


def _q(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema or TEXT}


def _enum(name: str, description: str, values: Iterable[str]) -> dict[str, Any]:
    return _q(name, description, {"type": "string", "enum": list(values)})


def _list(name: str, description: str, values: Iterable[str]) -> dict[str, Any]:
    """A comma-separated list of `values` (params.values; empty items are skipped)."""
    one = "|".join(values)
    return _q(name, description, {"type": "string", "pattern": f"^({one})?(,({one})?)*$"})


def _p(name: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", **schema}}


def _ok(description: str, schema: str = "Object") -> dict[str, Any]:
    return {
        "200": {"description": description,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}},
        **{code: {"$ref": "#/components/responses/Error"} for code in ("400", "401", "403", "404")},
    }


def _get(summary: str, params: list[dict[str, Any]], schema: str = "Object") -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params, "responses": _ok(summary, schema),
                    "security": [{"bearer": []}]}}


def _audit() -> dict[str, Any]:
    summary = ("The drift review's audit log: JSON pages newest first, or the whole log oldest first as "
               "JSON Lines or CSV")
    operation = _get(summary, [_enum("format", "json (default) | jsonl | csv", ("json", "jsonl", "csv")),
                               *PAGE_PARAMS])
    operation["get"]["responses"]["200"]["content"].update({
        "application/x-ndjson": {"schema": {"type": "string"}}, "text/csv": {"schema": {"type": "string"}}})
    return operation


def _ingest() -> dict[str, Any]:
    error = {"$ref": "#/components/responses/Error"}
    return {"post": {
        "summary": "Send one report (ingest token bound to the report's host)",
        "security": [{"bearer": []}],
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Report"}}}},
        "description": (
            "The body must be UTF-8 JSON. Times later than the moment the collector receives the report "
            "are stored as that moment (the report is kept as sent); started_at and finished_at before "
            "2000-01-01 are refused (422). `host` must be a host name: " + HOST_NAME_RULE + "."),
        "responses": {
            "201": {"description": "stored (the database commit is done)"},
            "200": {"description": "this same report was already stored under this run_id; nothing changed"},
            "409": {**error, "description": "another report is stored under this run_id (from this host or "
                                            "another one); the stored one is kept"},
            "400": error, "401": error, "403": error, "413": error, "422": error,
        },
    }}


def _paths() -> dict[str, Any]:
    status = _list("status", f"comma-separated statuses ({', '.join(RUN_STATUSES)})", RUN_STATUSES)
    host_status = _list("status", f"comma-separated statuses ({', '.join(RUN_STATUSES)}); "
                                  f"{STALE} = the stale hosts, like stale=true", HOST_STATUSES)
    return {
        "/api/v1/reports": _ingest(),
        "/api/v1/hosts": _get("Every host with its current state", [
            host_status, _q("role", "hosts having this role"), _q("commit", "current commit (prefix)"),
            _q("stale", "true or false (also 1/0, yes/no)", {"type": "boolean"}),
            _q("q", "host name contains"),
            _enum("seen", "1h | 24h | 7d: seen within; -1h | -24h | -7d: not seen for",
                  [*SEEN_WINDOWS_S, *(f"-{w}" for w in SEEN_WINDOWS_S)]),
            _enum("sort", "sort key", HOST_SORTS), _enum("order", "sort order", ("asc", "desc")),
            *PAGE_PARAMS], "Listing"),
        "/api/v1/hosts/{host}": _get("One host: current state, roles, current drift", [_p("host")]),
        "/api/v1/hosts/{host}/runs": _get("A host's runs, newest first", [_p("host"), status, *PAGE_PARAMS],
                                          "Listing"),
        "/api/v1/runs": _get("Runs across the fleet, newest first", [
            status, _q("commit", "the run's commit (prefix)"), *PAGE_PARAMS], "Listing"),
        "/api/v1/runs/{run_id}": _get("One run, with its whole report", [_p("run_id")]),
        "/api/v1/drift": _get("Current drift across the fleet", [
            _enum("group", "task (default): one row per task | host: one row per host and task",
                  ("task", "host")),
            _q("task", "exact task name"), _enum("kind", "drift kind", DRIFT_KINDS),
            _q("role", "role of the drifting task"), _q("host", "exact host name"),
            _enum("state", "current state of the item", ("open", "acknowledged", "accepted")), *PAGE_PARAMS],
            "Listing"),
        "/api/v1/drift/exceptions": {
            **_get("Drift exceptions (accepted drift until a date), newest first", []),
            **_review_actions()["/api/v1/drift/exceptions"]},
        "/api/v1/drift/audit": _audit(),
        **{k: v for k, v in _review_actions().items() if k != "/api/v1/drift/exceptions"},
        **_compliance_paths(),
        "/api/v1/commits": _get("Commits hosts reported, newest first, with hosts running and converged",
                                PAGE_PARAMS, "Listing"),
        "/api/v1/commits/{sha}": _get("Rollout of one commit (sha or a unique prefix)", [
            _p("sha", minLength=4),
            _enum("hosts", "running (default) | not_reached", ("running", "not_reached")), *PAGE_PARAMS]),
        "/api/v1/webhooks": _get("Webhook deliveries, newest first, with status counts. Webhook URLs are "
                                 "shown masked (scheme and host) and numbered in configuration order", [
            _enum("status", "delivery status", DELIVERY_STATUSES), *PAGE_PARAMS]),
        **_rollout_paths(),
        "/healthz": {"get": {
            "summary": "Liveness, database reachability, and whether this process leads the collectors "
                       "(`leader`: true, false, or null when it runs no leader-only work)", "security": [],
            "responses": {"200": {"description": "ok"}, "503": {"description": "database down"}}}},
        "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [],
                                         "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/metrics": {"get": {"summary": "Prometheus text format", "security": [{"bearer": []}],
                             "responses": {"200": {"description": "metrics"}}}},
        **_beacon_paths(),
        **_enrolment_paths(),
        **_evidence_paths(),
    }


def _evidence_paths() -> dict[str, Any]:
    """The evidence export for auditors (agent.collector.evidence_views; docs/drift-review.md section 7):
    readers and reviewers; ingest tokens get 403."""
    when = "a date YYYY-MM-DD (00:00 UTC) or an RFC 3339 time"
    day = "[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    clock = "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
    moment = {"type": "string", "pattern": f"^{day}(T{clock})?$"}
    bundle = _get(
        "Evidence for auditors over [from, to) in a scope: a ZIP bundle streamed as it is read (runs, drift "
        "items with their lifecycle, exceptions, approvals, rollout and review actions, commits with their "
        "signers; SHA256SUMS, and SHA256SUMS.sig when the collector has a key), or `summary`: the counts as "
        "JSON. 400 names a bad parameter; 404 a scope naming a host or role nobody reported", [
            {**_q("from", f"start of the range, included: {when}", moment), "required": True},
            _q("to", f"end of the range, excluded: {when}; default now", moment),
            _q("scope", "fleet (default), role:NAME (the hosts having that role, its items) or host:NAME"),
            _enum("format", "jsonl (default): evidence.jsonl | csv: one CSV per type | summary: the "
                            "counts as JSON", ("jsonl", "csv", "summary"))])
    bundle["get"]["responses"]["200"]["content"] = {
        "application/zip": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {"schema": {"type": "object"}}}
    key = _get("The collector's evidence signing key as an allowed_signers line for ssh-keygen -Y verify "
               "(serve --evidence-key FILE); 404 without one", [])
    key["get"]["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    return {"/api/v1/evidence": bundle, "/api/v1/evidence/key": key}


def _enrolment_paths() -> dict[str, Any]:
    """Self-enrolment (agent.collector.enrolment_views; docs/collector.md "Enrolment")."""
    error = {"$ref": "#/components/responses/Error"}
    errors = {code: error for code in ("400", "401", "403", "404", "413", "422")}
    no_nul = {"type": "string", "minLength": 1, "pattern": "^[^\\x00]+$"}
    reason = {"type": "string", "pattern": "^[^\\x00]*\\S[^\\x00]*$", "maxLength": 1000}
    request = {"type": "object", "required": ["host", "pickup_sha256"], "properties": {
        "host": {"type": "string", "pattern": HOST_NAME_PATTERN, "maxLength": MAX_HOST_CHARS},
        "pickup_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "groups": {"type": "array", "maxItems": 64,
                   "items": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,254}$"}}}}
    select = {"oneOf": [
        {"type": "object", "required": ["ids", "reason"],
         "properties": {"ids": {"type": "array", "minItems": 1, "items": {"type": "string",
                                                                          "pattern": "^[0-9a-f]{16}$"}},
                        "reason": reason, "existing": {"type": "boolean"}}, "additionalProperties": False},
        {"type": "object", "required": ["pattern", "reason"],
         "properties": {"pattern": no_nul, "reason": reason}, "additionalProperties": False},
        {"type": "object", "required": ["group", "reason"],
         "properties": {"group": no_nul, "reason": reason}, "additionalProperties": False}]}

    def post(summary: str, body: dict[str, Any] | None, codes: dict[str, Any],
             *params: Any) -> dict[str, Any]:
        operation = {"summary": summary, "security": [{"bearer": []}], "parameters": list(params),
                     "responses": {**codes, **errors}}
        if body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        return {"post": operation}

    decided = {"200": {"description": "the requests decided, and those left pending with why"}}
    states = ("pending", "approved", "denied", "collected", "all")
    return {
        "/api/v1/enrolments": {
            **post("A host asks for its own ingest token: with a site enrolment secret (token create "
                   "--enrol NAME) as the bearer, or with a client certificate naming the host when the "
                   "collector requires them", request,
                   {"201": {"description": "a new pending (or autosigned) request"},
                    "200": {"description": "the same request again (same host and pickup hash)"},
                    "429": {**error, "description": "too many requests pending (in total, from this "
                                                    "address, or for this host)"}}),
            **_get("Enrolment requests, oldest first (readers)",
                   [_enum("state", "pending (default), approved, denied, collected or all", states)])},
        "/api/v1/enrolments/approve": post(
            "Approve pending requests by ids, host-name pattern (fnmatch) or group (an operator: serve "
            "--operator NAME); a host that already has a token or reports only by id with existing", select,
            decided),
        "/api/v1/enrolments/deny": post(
            "Deny pending (or approved, not yet collected) requests by ids, pattern or group (an operator)",
            select, decided),
        "/api/v1/enrolments/{id}/pickup": post(
            "The host's poll, with its pickup secret as the bearer: pending, denied (by whom, why), or "
            "collected with its new ingest token (asking again replaces that token)", None,
            {"200": {"description": "the request's state, and the token once approved"}}, _p("id")),
    }


def _review_actions() -> dict[str, Any]:
    """The drift review's actions (agent.collector.review_views; docs/drift-review.md section 6): a
    reviewer token (`token create --reviewer NAME`) or a trusted-proxy user named with `serve --reviewer`;
    readers get 403. Bearer tokens carry no cookie, so these calls need no CSRF token."""
    error = {"$ref": "#/components/responses/Error"}
    text = {"type": "string", "minLength": 1, "maxLength": 10_000, "pattern": "^[^\\x00]*$"}
    refusals = {code: error for code in ("400", "401", "403", "404", "409", "413", "422")}

    def post(summary: str, body: dict[str, Any], params: list[dict[str, Any]], ok: str,
             created: bool = False) -> dict[str, Any]:
        return {"post": {"summary": summary, "security": [{"bearer": []}], "parameters": params,
                         "requestBody": {"required": False,
                                         "content": {"application/json": {"schema": body}}},
                         "responses": {"201" if created else "200": {
                             "description": ok,
                             "content": {"application/json": {"schema": {"type": "object"}}}},
                             **refusals}}}

    reason = {"type": "object", "required": ["reason"], "properties": {"reason": text},
              "additionalProperties": False}
    exception = {"type": "object", "required": ["scope", "owner", "reason", "ticket", "expires_at"],
                 "additionalProperties": False,
                 "properties": {
                     "scope": {"enum": ["item", "task", "role"]},
                     "item_id": {"type": "integer", "minimum": 1,
                                 "description": "scope item or task: the drift item it starts from"},
                     "same_loop_item": {"type": "boolean", "description": "scope task: only this loop item "
                                        "(absent or false: every loop item of the task)"},
                     "role": {**text, "description": "scope role: the Ansible role (or the playbook)"},
                     "role_kind": {"enum": ["ansible", "playbook"]},
                     "host_pattern": {**text, "description": "scope task or role: host names (fnmatch)"},
                     "host_group": {**text, "description": "scope task or role: hosts of this group"},
                     "owner": text, "reason": text, "ticket": text,
                     "expires_at": {"type": "string", "description": "YYYY-MM-DD (00:00 UTC) or RFC 3339; "
                                    "in the future, within 365 days"}}}
    return {
        "/api/v1/drift/items/{item_id}/{action}": post(
            "Acknowledge (someone is on it) or un-acknowledge a current drift item, with a reason "
            "(a reviewer); 409 when the item is resolved", reason,
            [_p("item_id", pattern="^[0-9]{1,12}$"), _p("action", enum=["ack", "unack"])],
            "the item after the action"),
        "/api/v1/drift/exceptions": post(
            "Accept drift until a date: create an exception (a reviewer). It changes what counts and "
            "alerts, never what hosts apply", exception, [], "the exception", created=True),
        "/api/v1/drift/exceptions/{exc_id}/revoke": post(
            "Revoke an exception, with a reason (a reviewer); its items reopen; 409 when already revoked",
            reason, [_p("exc_id", pattern="^[0-9]{1,12}$")], "the exception after the action"),
    }


def _compliance_paths() -> dict[str, Any]:
    """Compliance figures and their daily series (agent.collector.compliance_views)."""
    days = _q("days", "how many UTC days of series, ending today (default 90)",
              {"type": "integer", "minimum": 1, "maximum": 366})
    shape = ("hosts, in_sync, in_sync_with_exceptions, unknown, share, share_with_exceptions (0..1, null "
             "when no checked host), and `series`: the same per UTC day, today live")
    one = {**TEXT, "minLength": 1}
    return {
        "/api/v1/compliance": _get(f"The fleet's share of hosts in sync, and each role's: {shape}", [days]),
        "/api/v1/compliance/roles/{role}": _get(
            f"A role's share of hosts in sync and its tasks drifting now: {shape}", [_p("role"), days]),
        "/api/v1/compliance/hosts/{host}": _get(f"One host in sync or not, by day: {shape}",
                                                [_p("host"), days]),
        "/api/v1/compliance/tasks": _get(
            f"A task's share of its role's hosts in sync on it: {shape}",
            [{**_q("role", "the agent's role (playbook) of the task", one), "required": True},
             {**_q("task", "the task's name", one), "required": True}, days]),
    }


def _beacon_paths() -> dict[str, Any]:
    """The commit beacon (agent.collector.heads_views; docs/scale.md)."""
    error = {"$ref": "#/components/responses/Error"}
    heads = _get("The commit a watched source's ref points at (serve --heads-source), as Git last said; "
                 "ETag is the commit, If-None-Match with it answers 304", [
                     _q("source", "the agent's source.url"), _q("ref", "the agent's source.ref")])
    heads["get"]["responses"]["304"] = {"description": "the head is still the one in If-None-Match"}
    hook = {"post": {
        "summary": "A Git server's push hook: the collector asks Git for the watched source's heads at once",
        "security": [],
        "parameters": [_p("vendor", enum=["github", "gitlab", "gitea", "generic"])],
        "description": ("Signed with the secret of serve --hook-secret-file: X-Hub-Signature-256 (github), "
                        "X-Gitlab-Token (gitlab), X-Gitea-Signature or X-Forgejo-Signature (gitea), "
                        "X-Signature-256: sha256=HEX over {\"url\", \"ref\", \"after\"} (generic)."),
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {"200": {"description": "Git asked; how many heads changed"},
                      "202": {"description": "not a watched source and ref: ignored"},
                      "400": error, "401": error, "404": error, "413": error, "502": error},
    }}
    return {"/api/v1/heads": heads, "/api/v1/hooks/{vendor}": hook}
def _rollout_paths() -> dict[str, Any]:
    """Rollouts (docs/rollout.md; agent.collector.rollout_api)."""
    error = {"$ref": "#/components/responses/Error"}
    commit = _p("commit", pattern="^[0-9a-f]{4,64}$")
    policy = {**_q("policy", "sha256 of the commit's parsed rollout.yml (agent.rollout.Policy.digest)",
                   {"type": "string", "pattern": "^[0-9a-f]{64}$"}), "required": True}

    done = {"description": "done, logged with who and when"}

    def post(summary: str, body: dict[str, Any], codes: tuple[str, ...] = ("201",)) -> dict[str, Any]:
        return {"post": {"summary": summary, "security": [{"bearer": []}], "parameters": [commit],
                         "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                         "responses": {**{c: done for c in codes},
                                       "400": error, "401": error, "403": error, "404": error}}}

    reason = {"type": "string", "minLength": 1, "maxLength": 1000, "pattern": "^[^\\x00]*$"}
    return {
        "/api/v1/rollouts/{commit}": {"get": {
            "summary": "The rollout state agents ask before applying a new commit (a host's ingest token); "
                       "404 `unknown policy` until a host sent the policy", "security": [{"bearer": []}],
            "parameters": [commit, policy],
            "responses": {"200": {"description": "waves with counts, halt, approved plans"},
                          "304": {"description": "unchanged (If-None-Match)"},
                          "400": error, "401": error, "403": error, "404": error}}},
        "/api/v1/rollouts/{commit}/policy": {"put": {
            "summary": "Send the text of rollout.yml for (commit, policy digest) (a host's ingest token); "
                       "404 when the path names no commit",
            "security": [{"bearer": []}], "parameters": [commit, policy],
            "requestBody": {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}},
            "responses": {"201": {"description": "stored"}, "200": {"description": "already known"},
                          "400": error, "401": error, "403": error, "404": error, "413": error}}},
        "/api/v1/rollouts/{commit}/control": _get(
            "The commit's rollout as the commit page shows it: waves, halt, action log, plans pending "
            "approval, windows and freezes", [commit]),
        "/api/v1/rollouts/{commit}/actions": post(
            "Halt, resume, or skip a wave (an operator: `serve --operator NAME`)",
            {"type": "object", "required": ["action", "reason"],
             "properties": {"action": {"enum": ["halt", "resume", "skip"]}, "wave": {"type": "string"},
                            "reason": reason}, "additionalProperties": False}),
        "/api/v1/rollouts/{commit}/approvals": post(
            "Approve plan digests for the commit: every host with one of these plans may apply (an operator)",
            {"type": "object", "required": ["plan_digests", "reason"],
             "properties": {"plan_digests": {"type": "array", "minItems": 1,
                                             "items": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                            "reason": reason}, "additionalProperties": False}),
    }


def _components() -> dict[str, Any]:
    listing = {"type": "object", "required": ["items", "total", "limit", "offset", "next_offset"],
               "properties": {"items": {"type": "array", "items": {"type": "object"}},
                              "total": {"type": "integer"}, "limit": {"type": "integer"},
                              "offset": {"type": "integer"}, "next_offset": {"type": ["integer", "null"]}}}
    error = {"type": "object", "required": ["error"],
             "properties": {"error": {"type": "string"}, "field": {"type": "string"}}}
    error_response = {"description": "error with a reason (and the field, for 422)",
                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    schemas = {**_report_schemas(), "Listing": listing, "Error": error, "Object": {"type": "object"}}
    return {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": schemas,
        "responses": {"Error": error_response},
    }


@functools.cache
def report_schema() -> dict[str, Any]:
    text = (resources.files("agent") / "schema" / "report-v1.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _report_schemas() -> dict[str, Any]:
    """The report schema as components: its $defs lifted next to it and its references rewritten, since
    tools resolve "#/$defs/..." against the OpenAPI document's root, not the embedded schema's $id."""
    text = json.dumps(report_schema()).replace('"#/$defs/', '"#/components/schemas/')
    report = json.loads(text)
    defs: dict[str, Any] = report.pop("$defs")
    for key in ("$id", "$schema"):
        report.pop(key, None)
    # What the collector accepts beyond the report schema (agent.collector.hostnames).
    report["properties"]["host"] = {"type": "string", "pattern": HOST_NAME_PATTERN,
                                    "maxLength": MAX_HOST_CHARS, "description": HOST_NAME_RULE}
    return {**defs, "Report": report}


def _reshaped(paths: dict[str, Any]) -> dict[str, Any]:
    """A path parameter holding `?` or `#` cuts the URL short: `POST /api/v1/rollouts/web?x/actions` is
    `/api/v1/rollouts/web`, a GET-only route, so a POST or PUT with a path parameter may be answered 405."""
    error = {"$ref": "#/components/responses/Error"}
    for path, operations in paths.items():
        for method, operation in operations.items():
            if "{" in path and method != "get":
                operation["responses"].setdefault("405", error)
    return paths


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "gitops-collector API", "version": agent.__version__},
        "paths": _reshaped(_paths()),
        "components": _components(),
        "security": [{"bearer": []}],
    }
