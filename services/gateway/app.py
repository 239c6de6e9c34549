"""The gateway deployment: FastAPI ingress, thin HTTP glue over :class:`OpenAIServing`.

Per request it: takes the request id (from Serve's proxy, the client's
``X-Request-ID``, or a new one), checks the body size and JSON, authenticates
the Bearer key to a tenant, and hands the parsed request to the serving logic.
Every error leaves through :func:`services.gateway.errors.to_response`.
"""

import json
import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.errors import (
    InvalidRequestError,
    LLMOpsError,
    NotFoundError,
    RequestTooLargeError,
    ServiceUnavailableError,
)
from services.gateway.auth import Authenticator
from services.gateway.config import AuthConfig, GatewayConfig
from services.gateway.errors import envelope, to_response
from services.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DocumentsRequest,
    EmbeddingRequest,
    RetrieveRequest,
    parse_request,
)
from services.gateway.retrieval import RetrievalServing
from services.gateway.serving import OpenAIServing

logger = logging.getLogger("llmops.gateway")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

api = FastAPI(title="llmops", docs_url=None, redoc_url=None, openapi_url="/openapi.json")


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


def _respond(result: Any) -> Response:
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(result, media_type="text/event-stream", headers=_SSE_HEADERS)


@serve.deployment(name="gateway")
@serve.ingress(api)
class Gateway:
    """The OpenAI-compatible front door (see the module docstring)."""

    def __init__(
        self,
        gateway: dict[str, Any],
        auth: dict[str, Any],
        generation: dict[str, Any],
        embeddings: dict[str, Any],
        retrieval: Any = None,
    ) -> None:
        self.config = GatewayConfig.model_validate(gateway)
        self.auth = Authenticator(AuthConfig.model_validate(auth))
        self.serving = OpenAIServing(generation, embeddings)
        self.retrieval = RetrievalServing(retrieval)

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
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequestError(
                f"We could not parse the JSON body of your request ({exc}).", param=None
            ) from None

    def _tenant(self, request: Request) -> str:
        return self.auth.tenant_for(request.headers.get("authorization"))

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the gateway answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Readiness: every model deployment has answered ``info()``."""
        try:
            infos = await self.serving.model_infos()
        except Exception as exc:
            raise ServiceUnavailableError(f"models are not ready: {type(exc).__name__}") from exc
        return JSONResponse({"status": "ready", "models": sorted(infos)})

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> dict[str, Any]:
        self._tenant(request)
        return await self.serving.list_models()

    @api.get("/v1/models/{model:path}")
    async def get_model(self, model: str, request: Request) -> dict[str, Any]:
        self._tenant(request)
        return await self.serving.get_model(model)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        tenant = self._tenant(request)
        req = parse_request(ChatCompletionRequest, await self._body(request))
        result = await self.serving.chat(req, request_id_of(request), tenant)
        return _respond(result)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        tenant = self._tenant(request)
        req = parse_request(CompletionRequest, await self._body(request))
        result = await self.serving.completions(req, request_id_of(request), tenant)
        return _respond(result)

    @api.post("/v1/retrieve")
    async def retrieve(self, request: Request) -> dict[str, Any]:
        tenant = self._tenant(request)
        req = parse_request(RetrieveRequest, await self._body(request))
        return await self.retrieval.retrieve(req, tenant)

    @api.get("/v1/collections")
    async def list_collections(self, request: Request) -> dict[str, Any]:
        return await self.retrieval.collections(self._tenant(request))

    @api.post("/v1/collections/{name}/documents")
    async def upsert_documents(self, name: str, request: Request) -> dict[str, Any]:
        tenant = self._tenant(request)
        req = parse_request(DocumentsRequest, await self._body(request))
        return await self.retrieval.upsert(name, req, tenant)

    @api.delete("/v1/collections/{name}/documents/{doc_id:path}")
    async def delete_document(self, name: str, doc_id: str, request: Request) -> dict[str, Any]:
        return await self.retrieval.delete(name, doc_id, self._tenant(request))

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Response:
        self._tenant(request)
        req = parse_request(EmbeddingRequest, await self._body(request))
        return JSONResponse(await self.serving.embeddings(req))
