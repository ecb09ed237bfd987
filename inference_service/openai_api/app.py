"""The FastAPI application: routes, bearer-token auth, OpenAI-style errors and per-route metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Counter
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chargpt import errors
from chargpt.server.tenancy.interceptor import bearer_key, resolve
from chargpt.server.tenancy.keys import KeyStore
from chargpt.server.tenancy.principal import set_principal
from chargpt.server.tenancy.scopes import Scope as TenancyScope
from inference_service.openai_api import completions
from inference_service.openai_api.errors import error_body, error_parts, error_response
from inference_service.openai_api.schemas import CompletionRequest, ScoreRequest
from inference_service.ownership import name_for, visible
from inference_service.registry import State
from inference_service.service import InferenceService

log = logging.getLogger(__name__)
CHAT_MESSAGE = ("chargpt serves character-level language models: they were trained on plain text, have no chat "
                "template and no notion of roles or messages, so /v1/chat/completions cannot be answered "
                "honestly. Use POST /v1/completions with a text prompt instead.")
# Every route's tenancy scope, as RPC_SCOPES for gRPC (tests/tenancy asserts each route of the app has one).
ROUTE_SCOPES: dict[str, TenancyScope] = {
    "/health": TenancyScope.OPEN, "/v1/models": TenancyScope.OWN, "/v1/models/{name}": TenancyScope.OWN,
    "/v1/completions": TenancyScope.OWN, "/v1/score": TenancyScope.OWN, "/v1/chat/completions": TenancyScope.OPEN,
}


def create_app(service: InferenceService, keys: KeyStore | None, requests_total: Counter) -> FastAPI:
    """The OpenAI-compatible API over `service` (the gRPC servicer's sibling); `keys` None: single-user, open."""
    app = FastAPI(title="chargpt OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    api = APIRouter(dependencies=[Depends(_caller(keys))])
    _add_routes(app, api, service)
    app.include_router(api)
    _add_error_handlers(app)
    app.add_middleware(_CountRequests, counter=requests_total)
    return app


def _caller(keys: KeyStore | None) -> Any:
    """A dependency that resolves `Authorization: Bearer <key>` and runs the route as that caller."""

    async def check(request: Request) -> None:
        if keys is None:
            return
        principal = await resolve(keys, bearer_key(request.headers.get("authorization")))
        if principal is None:
            raise errors.UnauthenticatedError("missing or invalid API key (Authorization: Bearer <key>)")
        # The route runs in this task after its dependencies: it sees this caller (and the next request on the
        # connection sets its own before any route runs).
        set_principal(principal)
    return check


def _add_routes(app: FastAPI, api: APIRouter, service: InferenceService) -> None:
    registry = service.registry

    @app.get("/health")
    async def health() -> JSONResponse:
        ready = sum(e.state is State.READY for e in registry.models.values())
        if registry.draining:
            return JSONResponse({"status": "shutting_down", "models_ready": ready}, status_code=503)
        return JSONResponse({"status": "ok", "models_ready": ready})

    @api.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        entries = visible(list(registry.models.values()))
        return {"object": "list", "data": [_model_json(e) for e in entries if e.state is State.READY]}

    @api.get("/v1/models/{name}")
    async def get_model(name: str) -> dict[str, Any]:
        return _model_json(registry.get(name))

    @api.post("/v1/completions", response_model=None)
    async def create_completion(body: CompletionRequest) -> dict[str, Any] | StreamingResponse:
        runs = completions.start_runs(service, body)
        if not body.stream:
            return await completions.complete(body, runs)
        return StreamingResponse(_guarded(completions.stream(body, runs)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @api.post("/v1/score")
    async def score(body: ScoreRequest) -> dict[str, Any]:
        # stride None: the service's default (block_size); an explicit 0 is refused
        reply = await service.score(body.model, body.text, body.stride, body.include_token_logprobs)
        out = {"object": "score", "model": body.model, "mean_nll": reply.mean_nll,
               "bits_per_char": reply.bits_per_char, "perplexity": reply.perplexity, "num_tokens": reply.num_tokens}
        if body.include_token_logprobs:
            out["token_logprobs"] = reply.token_logprobs
        return out

    @api.post("/v1/chat/completions")
    async def chat() -> JSONResponse:
        return JSONResponse(error_body(CHAT_MESSAGE, "invalid_request_error", "messages", "chat_not_supported"),
                            status_code=400)


async def _guarded(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """After the 200 and the first events, a failure can only be reported in-band: an error event (the openai SDK
    raises on it), then [DONE]; an unexpected one too, as a server_error, rather than a cut connection."""
    try:
        async for event in events:
            yield event
    except Exception as exc:
        if not isinstance(exc, errors.ChargptError | TimeoutError):
            log.exception("a completion stream failed")
        _status, body = error_parts(exc)
        yield completions.sse(body)
        yield completions.sse("[DONE]")


def _model_json(entry: Any) -> dict[str, Any]:
    created = int(entry.loaded_time.timestamp()) if entry.loaded_time is not None else 0
    out = {"id": name_for(entry), "object": "model", "created": created, "owned_by": "chargpt", "source": entry.source}
    if entry.checkpoint is not None:
        out["max_model_len"] = entry.checkpoint.model.config.block_size
        out["vocabulary"] = entry.checkpoint.tokenizer.vocabulary
    return out


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        # A body that is not JSON has a character position, not a parameter, in its loc.
        loc = [str(p) for p in first["loc"] if p != "body"] if first.get("type") != "json_invalid" else []
        param = loc[0] if loc else None
        message = f"{'.'.join(loc)}: {first['msg']}" if loc else str(first["msg"])
        if first.get("type") == "extra_forbidden":
            message = f"unknown parameter {'.'.join(loc)!r} (refused rather than ignored)"
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), type_), status_code=exc.status_code)

    # chargpt's own errors are answers, not crashes: a handler for them (not for Exception, which Starlette
    # routes through its server-error middleware and logs as a crash) maps each through the one table.
    @app.exception_handler(errors.ChargptError)
    async def domain_error(request: Request, exc: errors.ChargptError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)


class _CountRequests:
    """`chargpt_inference_http_requests_total{route, status}` (pure ASGI: streaming responses pass through)."""

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.counter.labels(route=path, status=str(status[0])).inc()
