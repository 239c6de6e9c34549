"""The gateway's OpenAPI 3.1 document: every route's request body, responses and errors.

The routes parse their bodies themselves (strict, a 400 naming the field, never
FastAPI's 422), so FastAPI sees no body models and would document none. A route table
(:data:`services.gateway.openapi_routes.ROUTES`) says per operation what it takes, what it returns and which errors it can answer
with; :func:`build_openapi` merges that with what FastAPI derives from the routes
(paths, path and query parameters). A route missing from the table (or an entry
without a route) is an error when the document is built, so the two cannot drift.

Request schemas are the wire models of :mod:`services.gateway.protocol`, response
schemas those of :mod:`services.gateway.schemas`. A stream (``"stream": true``) is
``text/event-stream``; its schema describes one event the way Schemathesis and
OpenAPI 3.2's ``itemSchema`` read it: ``data`` holds a JSON chunk (or an error
envelope, when the stream breaks after its 200), or ``[DONE]`` at the end; a
``: server-timing`` comment line before ``[DONE]`` carries the whole stream's stage
timings. Request examples name the models and collection of ``configs/local.yaml``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.gateway import schemas as out

OPENAPI_VERSION = "3.1.0"
_SCHEMAS = "#/components/schemas/"
_ERROR = {"$ref": f"{_SCHEMAS}ErrorResponse"}
SECURITY_SCHEME = "bearerAuth"

DESCRIPTION = """\
An OpenAI-compatible API: any OpenAI SDK works against `/v1`.

**Auth**: `Authorization: Bearer <key>`; the key names a tenant. With auth off (allowed
on loopback only) no key is needed.

**Errors** always use OpenAI's envelope, `{"error": {"message", "type", "param", "code"}}`:
400 (bad request; an unknown field is `Unrecognized request argument supplied: <field>`;
never 422), 401, 403, 404, 413, 503 (with `Retry-After`). A 500 means a bug and says
only `internal error, request id <id>`.

**Headers**: every response has `X-Request-ID` (the client's, when it sends one) and
`Server-Timing` (per-stage durations: auth, guardrails, embed, retrieve, generate,
serialize; for a stream, up to its first token). With guardrails configured,
`X-Guardrails` lists each check's decision (`input.pii=redacted;labels=EMAIL_ADDRESS,
input.prompt_injection=pass`); a stream's output decisions come in a `: guardrails ...`
comment line before `: server-timing`.

**Guardrails**: a prompt a check blocks is 400 `content_policy_violation` (the message
names the check); an answer a check blocks ends with `finish_reason: "content_filter"`
(streamed or not) and never carries the blocked text; redacted spans read `[ENTITY]`.

**Streams** (`"stream": true`) are Server-Sent Events: `data: <JSON chunk>` events, then
with `stream_options.include_usage` a chunk with the usage, then for a RAG model a chunk
with its `citations`, then a `: server-timing ...` comment line and `data: [DONE]`.
"""

#: what an error status means on every route that can answer with it
ERRORS: dict[int, str] = {
    400: "Invalid request: `param` names the field. A body that is not a JSON object, an unknown "
    "field (`Unrecognized request argument supplied: <field>`), a missing or bad value, or a "
    "parameter the model's engine does not support (`unsupported_parameter`), or a prompt a "
    "guardrail check blocked (`content_policy_violation`; the message names the check).",
    401: "No API key, or one that matches no tenant (`invalid_api_key`).",
    403: "The key may not do this.",
    404: "Not found.",
    413: "The body is over the gateway's `max_body_bytes` (`request_too_large`).",
    429: "Over a rate limit or quota; retry after `Retry-After` seconds.",
    500: "A bug: the message is `internal error, request id <id>` and nothing else; the traceback "
    "is in the server log under that id.",
    503: "A dependency is not ready; retry after `Retry-After` seconds (`service_unavailable`).",
}
STARTING = "While the platform starts: a deployment behind the gateway has not answered yet."
#: response headers an error status carries beyond those of every response
ERROR_HEADERS: dict[int, tuple[str, ...]] = {429: ("Retry-After",), 503: ("Retry-After",)}


def _header(description: str, required: bool = True, **schema: str) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string", **schema}}


HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": _header(
        "The request's id: the client's `X-Request-ID` when it sent one, else a new one. Logs, "
        "traces and 5xx messages name it."
    ),
    "Server-Timing": _header(
        "Per-stage durations in ms (`auth;dur=0.1, generate;dur=812.4`); for a stream, the stages "
        "up to its first token. Empty when no stage ran."
    ),
    "X-Trace-Id": _header("The OpenTelemetry trace id, when tracing is on.", required=False),
    "Retry-After": _header("Seconds to wait before retrying.", pattern="^[0-9]+$"),
}
_COMMON_HEADERS = ("X-Request-ID", "Server-Timing", "X-Trace-Id")


@dataclass(frozen=True)
class Route:
    """The documentation of one operation.

    Args:
        operation_id: OpenAI's name where it has one (``createChatCompletion``).
        response: the 200 JSON body.
        request: the JSON body model, parsed by the route with ``parse_request``; implies
            400 and 413.
        stream: the JSON in each SSE event when the body says ``"stream": true``.
        auth: the route authenticates a Bearer key (implies 401).
        errors: further statuses the route answers with, and what each means there.
        examples: named request bodies (each must be accepted with a 200).
        parameters: per path or query parameter, keys to set on its OpenAPI object
            (``description``, ``example``).
    """

    operation_id: str
    tag: str
    summary: str
    response: type[BaseModel]
    description: str = ""
    request: type[BaseModel] | None = None
    stream: type[BaseModel] | None = None
    auth: bool = True
    errors: Mapping[int, str] = field(default_factory=dict)
    examples: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    parameters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def statuses(self) -> dict[int, str]:
        """Every error status of the operation, with its description."""
        found = {500: ERRORS[500]}
        if self.request is not None:
            found |= {400: ERRORS[400], 413: ERRORS[413]}
        if self.auth:  # the /v1 routes: a key, and the start-up gate (services.gateway.readiness)
            found[401] = ERRORS[401]
            found[503] = f"{ERRORS[503]} {STARTING}"
        for status, why in self.errors.items():
            # an implied status, or one that means the same everywhere: add to its meaning
            found[status] = f"{ERRORS[status]} {why}" if status in found or status in ERROR_HEADERS else why
        return dict(sorted(found.items()))


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"{_SCHEMAS}{model.__name__}"}


def _headers(names: tuple[str, ...]) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def sse_event_schema(chunk: type[BaseModel]) -> dict[str, Any]:
    """One Server-Sent Event of a stream of ``chunk``s, as a parsed event (``data``, ``event``)."""
    return {
        "type": "object",
        "description": f"One event: `data` is a {chunk.__name__} as JSON, an ErrorResponse when the "
        "stream broke after its 200, or `[DONE]` (the last event).",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [_ref(chunk), _ERROR]},
                    },
                ]
            },
            "event": {"type": "string"},
        },
    }


def _responses(route: Route) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref(route.response)}}
    description = "OK."
    if route.stream is not None:
        content["text/event-stream"] = {"schema": sse_event_schema(route.stream)}
        description = 'OK: JSON, or with `"stream": true` Server-Sent Events.'
    responses: dict[str, Any] = {
        "200": {"description": description, "headers": _headers(_COMMON_HEADERS), "content": content}
    }
    for status, why in route.statuses().items():
        responses[str(status)] = {
            "description": why,
            "headers": _headers(_COMMON_HEADERS + ERROR_HEADERS.get(status, ())),
            "content": {"application/json": {"schema": _ERROR}},
        }
    return responses


def _parameters(route: Route, derived: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    params = []
    for param in derived:
        param = copy.deepcopy(param)
        schema = param.get("schema", {})
        # FastAPI writes an optional query parameter as `string | null`; absent is how it says none
        branches = [s for s in schema.get("anyOf", ()) if s.get("type") != "null"]
        if len(branches) == 1:
            param["schema"] = {**branches[0], **{k: v for k, v in schema.items() if k != "anyOf"}}
        extra = route.parameters.get(param["name"])
        if extra is None:
            raise LookupError(f"{where}: parameter {param['name']!r} has no description in ROUTES")
        param.update(extra)
        params.append(param)
    unknown = set(route.parameters) - {p["name"] for p in derived}
    if unknown:
        raise LookupError(f"{where}: ROUTES describes parameters the route does not have: {sorted(unknown)}")
    return params


def _operation(route: Route, derived: dict[str, Any], where: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "tags": [route.tag],
        "summary": route.summary,
        "operationId": route.operation_id,
    }
    if route.description:
        op["description"] = route.description
    if derived.get("parameters"):
        op["parameters"] = _parameters(route, derived["parameters"], where)
    elif route.parameters:
        raise LookupError(f"{where}: ROUTES describes parameters, the route has none")
    if route.request is not None:
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _ref(route.request),
                    "examples": {name: {"value": value} for name, value in route.examples.items()},
                }
            },
        }
    elif route.examples:
        raise LookupError(f"{where}: ROUTES has body examples for a route without a body")
    op["responses"] = _responses(route)
    op["security"] = [{SECURITY_SCHEME: []}] if route.auth else []
    return op


def _component_schemas(routes: Mapping[tuple[str, str], Route]) -> dict[str, Any]:
    models: list[type[BaseModel]] = [out.ErrorResponse]
    for route in routes.values():
        models += [m for m in (route.request, route.response, route.stream) if m is not None]
    unique = list(dict.fromkeys(models))
    _, defs = models_json_schema([(m, "validation") for m in unique], ref_template=_SCHEMAS + "{model}")
    schemas: dict[str, Any] = defs["$defs"]
    missing = [m.__name__ for m in unique if m.__name__ not in schemas]
    if missing:  # pydantic renames a model whose name is taken: the $refs above would dangle
        raise LookupError(f"schema names taken twice: {missing}")
    return dict(sorted(schemas.items()))


def build_openapi(app: FastAPI, routes: Mapping[tuple[str, str], Route]) -> dict[str, Any]:
    """The OpenAPI document of ``app``: FastAPI's paths and parameters, documented by ``routes``.

    Raises:
        LookupError: a route of ``app`` has no entry in ``routes``, an entry has no route,
            or a parameter is undocumented.
    """
    derived = get_openapi(
        title=app.title, version=app.version, openapi_version=OPENAPI_VERSION, routes=app.routes
    )
    paths: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, str]] = set()
    for path, operations in derived["paths"].items():
        for method, operation in operations.items():
            key = (method.upper(), path)
            route = routes.get(key)
            if route is None:
                raise LookupError(f"{key[0]} {path} is not documented: add it to ROUTES in {__name__}")
            seen.add(key)
            paths.setdefault(path, {})[method] = _operation(route, operation, f"{key[0]} {path}")
    stale = sorted(set(routes) - seen)
    if stale:
        raise LookupError(f"ROUTES documents operations the app does not have: {stale}")
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": app.title, "version": app.version, "description": DESCRIPTION},
        "tags": [{"name": t} for t in dict.fromkeys(r.tag for r in routes.values())],
        "paths": paths,
        "components": {
            "schemas": _component_schemas(routes),
            "headers": HEADERS,
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`llmops keys create`); not needed when auth is off.",
                }
            },
        },
    }


def install(app: FastAPI, routes: Mapping[tuple[str, str], Route]) -> Callable[[], dict[str, Any]]:
    """Make ``app.openapi()`` (and so ``/openapi.json``) return :func:`build_openapi`'s document,
    built on first use and cached on the app (``app.openapi_schema``), as FastAPI does."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, routes)
        return app.openapi_schema

    # FastAPI's documented way to replace the document: assign the app's `openapi`
    app.openapi = openapi  # type: ignore[method-assign]
    return openapi
