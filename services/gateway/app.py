"""The gateway deployment: FastAPI ingress, thin HTTP glue over :class:`OpenAIServing`.

Per request it: takes the request id (from Serve's proxy, the client's
``X-Request-ID``, or a new one), checks the body size and JSON, authenticates
the Bearer key to a tenant, and hands the parsed request to the serving logic.
Every error leaves through :func:`services.gateway.errors.to_response`.
"""

import asyncio
import contextlib
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pydantic_core
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitoring.config import MonitoringConfig
from monitoring.inference_table import InferenceTable
from monitoring.request_log import RequestLog
from monitoring.runtime import observability
from services.errors import (
    InvalidRequestError,
    LLMOpsError,
    NotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
)
from services.gateway.auth import Authenticator, Identity
from services.gateway.config import AuthConfig, GatewayConfig
from services.gateway.errors import envelope, to_response
from services.gateway.observe import GatewayObserver, ObservabilityMiddleware, RequestObservation, current
from services.gateway.openapi import install as install_openapi
from services.gateway.openapi_routes import ROUTES
from services.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DocumentsRequest,
    EmbeddingRequest,
    RetrieveRequest,
    parse_request,
)
from services.gateway.readiness import Readiness
from services.gateway.retrieval import RetrievalServing
from services.gateway.serving import OpenAIServing, model_probes
from services.guardrails.chain import Guardrails
from services.guardrails.config import GuardrailsConfig
from services.guardrails.judge_call import judge_caller

logger = logging.getLogger("llmops.gateway")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
READYZ_WAIT_S = 2.0  # /readyz answers within this, ready or not
GAUGE_REFRESH_S = 2.0  # well inside Ray's gauge TTL (two export intervals)
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

api = FastAPI(title="llmops", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
install_openapi(
    api, ROUTES
)  # request bodies, responses and errors of every route: services/gateway/openapi.py


def request_id_of(request: Request) -> str:
    """The id Serve's proxy (or the client) put in ``X-Request-ID``, else a new one."""
    rid = request.headers.get("x-request-id")
    if rid and _REQUEST_ID.match(rid):
        return rid
    state_rid: str | None = getattr(request.state, "request_id", None)
    return state_rid or "unknown"


class RequestIdMiddleware:
    """Give a request without ``X-Request-ID`` an id, and put it on the response.

    Serve's HTTP proxy already assigns one and echoes it on the response; this
    covers direct calls to the replica. Plain ASGI (not ``BaseHTTPMiddleware``,
    which costs an extra task per request and buffers streaming responses).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(k == b"x-request-id" for k, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


# Starlette runs the middleware added last first: the request id exists before the
# observation that logs it opens.
api.add_middleware(ObservabilityMiddleware, root=api)
api.add_middleware(RequestIdMiddleware)


@api.exception_handler(LLMOpsError)
async def _client_error(request: Request, exc: LLMOpsError) -> JSONResponse:
    # also catches a RayTaskError from a model replica: Ray makes it an instance of its cause
    return to_response(exc, request_id_of(request))


@api.exception_handler(Exception)
async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this handler, so Serve also logs the traceback with the request id
    return to_response(exc, request_id_of(request))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        return to_response(
            NotFoundError(f"Unknown route {request.method} {request.url.path}."), request_id_of(request)
        )
    return JSONResponse(
        envelope(str(exc.detail), "invalid_request_error"), status_code=exc.status_code, headers=exc.headers
    )


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # OpenAI routes parse bodies themselves; this covers path/query parameters (never a 422)
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"][1:])
    return to_response(
        InvalidRequestError(f"Invalid value for '{loc}': {err['msg']}", param=loc), request_id_of(request)
    )


def _respond(result: Any, obs: RequestObservation) -> Response:
    if isinstance(result, dict):
        with obs.stage("serialize"):
            return JSONResponse(result)
    return StreamingResponse(result, media_type="text/event-stream", headers=_SSE_HEADERS)


def _observation() -> RequestObservation:
    obs = current()
    if obs is None:  # only when the app runs without its gateway replica (never in Serve)
        raise RuntimeError("no request observation: the gateway's middleware did not run")
    return obs


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


#: the times ``/v1/usage`` can name: from the epoch to the end of year 9999
_MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def _parse_time(value: str | None, now: float, param: str = "since") -> float:
    """``since``/``until`` as epoch seconds: RFC 3339 / ISO 8601, or epoch seconds; default 24 h ago."""
    if value is None:
        return now - 86_400
    try:
        ts = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequestError(
                f"Invalid value for '{param}': {value!r}; use an ISO 8601 time such as "
                "2026-11-26T00:00:00Z, or epoch seconds.",
                param=param,
                value=value,
            ) from None
        if parsed.tzinfo is None:
            raise InvalidRequestError(
                f"Invalid value for '{param}': {value!r} has no time zone; add Z or an offset.",
                param=param,
                value=value,
            ) from None
        ts = parsed.timestamp()
    if not 0 <= ts <= _MAX_TIME:  # NaN fails this too
        raise InvalidRequestError(
            f"Invalid value for '{param}': {value!r} is outside 1970-01-01 .. 9999-12-31.",
            param=param,
            value=value,
        )
    return ts


@serve.deployment(name="gateway")
@serve.ingress(api)
class Gateway:
    """The OpenAI-compatible front door (see the module docstring)."""

    async def __init__(  # type: ignore[misc]
        self,
        gateway: dict[str, Any],
        auth: dict[str, Any],
        generation: dict[str, Any],
        embeddings: dict[str, Any],
        retrieval: Any = None,
        monitoring: dict[str, Any] | None = None,
        usage: Any = None,
        usage_flush_interval_s: float = 1.0,
        guardrails: dict[str, Any] | None = None,
    ) -> None:
        self.config = GatewayConfig.model_validate(gateway)
        auth_config = AuthConfig.model_validate(auth)
        self.auth = Authenticator(auth_config)
        self.retrieval = RetrievalServing(retrieval, self.config.retry_timeout_s)
        self.readiness = Readiness(
            {**model_probes(generation, embeddings), **self.retrieval.readiness_probes()},
            self.config.startup_wait_s,
        )
        mon = MonitoringConfig.model_validate(monitoring or {})
        tenants = [k.tenant for k in auth_config.keys] + [auth_config.anonymous_tenant]
        obs = observability(mon, tenants=tenants)
        guards = None
        if guardrails and any(not c.empty for c in GuardrailsConfig.model_validate(guardrails).chains()):
            guards = Guardrails(guardrails, judge=judge_caller(generation), metrics=obs.metrics)
            await asyncio.to_thread(guards.warm_up)  # load the classifiers before the first request
        self.serving = OpenAIServing(
            generation, embeddings, self.readiness, self.config.retry_timeout_s, guards
        )
        log = mon.request_log
        self._usage = usage
        recorder = None
        if usage is not None:
            from services.usage.recorder import UsageRecorder

            recorder = UsageRecorder(usage.record.remote, usage_flush_interval_s)
        table_cfg = mon.inference_table
        self.observer = GatewayObserver(
            mon,
            obs.metrics,
            RequestLog(log.path or "-") if log.enabled else None,
            recorder,
            InferenceTable(table_cfg) if table_cfg.enabled and table_cfg.path else None,
        )
        api.state.observer = self.observer
        self._refresh = asyncio.create_task(self._refresh_gauges()) if obs.metrics is not None else None

    async def _refresh_gauges(self) -> None:
        metrics = self.observer.metrics
        assert metrics is not None
        while True:
            await asyncio.sleep(GAUGE_REFRESH_S)
            try:
                metrics.refresh()
            except Exception:  # a gauge must never take the gateway down
                logger.warning("could not refresh gauges", exc_info=True)

    async def __del__(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        if self.observer.metrics is not None:
            self.observer.metrics.refresh()  # buffered counters
        with contextlib.suppress(Exception):
            if self.observer.usage is not None:
                await self.observer.usage.close()
        self.observer.close()

    async def _body(self, request: Request) -> Any:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLargeError(
                f"Request body is {declared} bytes; the limit is {limit} bytes.",
                param=None,
                value=int(declared),
            )
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise RequestTooLargeError(f"Request body is over the limit of {limit} bytes.", param=None)
        try:
            # pydantic's parser, stricter than json.loads: a lone surrogate escape ("\ud800"),
            # NaN or Infinity is invalid JSON here (they broke requests further down)
            return pydantic_core.from_json(bytes(body), allow_inf_nan=False)
        except ValueError as exc:
            raise InvalidRequestError(
                f"We could not parse the JSON body of your request ({exc}).", param=None
            ) from None

    async def _tenant(self, request: Request) -> str:
        """The caller's tenant (401 without a valid key), once the platform is ready (503 before)."""
        tenant = self._identify(request).tenant
        await self.readiness.wait()
        return tenant

    def _identify(self, request: Request) -> Identity:
        obs = current()
        if obs is None:
            return self.auth.identify(request.headers.get("authorization"))
        with obs.stage("auth"):
            who = self.auth.identify(request.headers.get("authorization"))
        obs.tenant = who.tenant
        return who

    async def _parse(self, request: Request, model: Any) -> Any:
        """Body size, JSON and schema checks: the ``guardrails`` stage (input validation)."""
        with _observation().stage("guardrails"):
            return parse_request(model, await self._body(request))

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the gateway answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Readiness: every deployment behind the gateway has answered (503 naming those that have not)."""
        infos = await self.serving.model_infos(wait_s=READYZ_WAIT_S)
        return JSONResponse({"status": "ready", "models": sorted(infos)})

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> dict[str, Any]:
        await self._tenant(request)
        return await self.serving.list_models()

    @api.get("/v1/models/{model:path}")
    async def get_model(self, model: str, request: Request) -> dict[str, Any]:
        await self._tenant(request)
        return await self.serving.get_model(model)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        tenant = await self._tenant(request)
        req = await self._parse(request, ChatCompletionRequest)
        obs = _observation()
        result = await self.serving.chat(req, request_id_of(request), tenant, obs)
        return _respond(result, obs)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        tenant = await self._tenant(request)
        req = await self._parse(request, CompletionRequest)
        obs = _observation()
        result = await self.serving.completions(req, request_id_of(request), tenant, obs)
        return _respond(result, obs)

    @api.post("/v1/retrieve")
    async def retrieve(self, request: Request) -> Response:
        tenant = await self._tenant(request)
        req = await self._parse(request, RetrieveRequest)
        obs = _observation()
        return _respond(await self.retrieval.retrieve(req, tenant, obs), obs)

    @api.get("/v1/collections")
    async def list_collections(self, request: Request) -> dict[str, Any]:
        return await self.retrieval.collections(await self._tenant(request))

    @api.post("/v1/collections/{name}/documents")
    async def upsert_documents(self, name: str, request: Request) -> dict[str, Any]:
        tenant = await self._tenant(request)
        req = await self._parse(request, DocumentsRequest)
        return await self.retrieval.upsert(name, req, tenant)

    @api.delete("/v1/collections/{name}/documents/{doc_id:path}")
    async def delete_document(self, name: str, doc_id: str, request: Request) -> dict[str, Any]:
        return await self.retrieval.delete(name, doc_id, await self._tenant(request))

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Response:
        await self._tenant(request)
        req = await self._parse(request, EmbeddingRequest)
        obs = _observation()
        return _respond(await self.serving.embeddings(req, obs), obs)

    @api.get("/v1/usage")
    async def usage(
        self, request: Request, tenant: str | None = None, since: str | None = None, until: str | None = None
    ) -> dict[str, Any]:
        """Tokens and cost per tenant and model since ``since`` (minute granularity).

        A tenant sees its own usage; an admin key (or anyone when auth is off, which
        is loopback-only) may name another tenant, or ``*`` for all.
        """
        who = self._identify(request)
        if self._usage is None:
            raise NotFoundError("Usage accounting is not enabled on this server.", param=None)
        wanted = who.tenant if tenant is None else tenant
        if wanted != who.tenant and not who.admin:
            raise PermissionDeniedError(
                "An API key can read only its own tenant's usage; an admin key can read others'.",
                param="tenant",
                value=tenant,
            )
        now = time.time()
        start = _parse_time(since, now)
        end = None if until is None else _parse_time(until, now, "until")
        if end is not None and end <= start:
            raise InvalidRequestError("'until' must be after 'since'.", param="until", value=until)
        # what this replica has not sent yet must count too: flush before reading
        if self.observer.usage is not None:
            await self.observer.usage.flush()
        rows = await self._usage.query.remote(None if wanted == "*" else wanted, start, end)
        totals = {
            k: sum(r[k] for r in rows)
            for k in ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd")
        }
        return {
            "object": "usage",
            "tenant": wanted,
            "since": _iso(start),
            "until": None if end is None else _iso(end),
            "granularity_seconds": 60,
            "data": rows,
            "total": totals,
        }
