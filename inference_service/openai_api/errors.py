"""The one place exceptions become OpenAI-style HTTP errors: a table per exception class, as for gRPC."""

from __future__ import annotations

import math

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from chargpt import errors
from chargpt.server.errors import message_for
from inference_service.openai_api.schemas import OPENAI_NAMES

# Most specific first: the first matching class wins. (HTTP status, OpenAI error type, code)
HTTP_BY_EXCEPTION: list[tuple[type[BaseException], int, str, str | None]] = [
    (errors.InvalidArgumentError, 400, "invalid_request_error", None),
    (errors.NotFoundError, 404, "invalid_request_error", "model_not_found"),
    (errors.AlreadyExistsError, 409, "invalid_request_error", None),
    (errors.FailedPreconditionError, 409, "invalid_request_error", None),
    (errors.RateLimitedError, 429, "rate_limit_error", "rate_limit_exceeded"),
    (errors.QuotaExceededError, 429, "insufficient_quota", "insufficient_quota"),
    (errors.ResourceExhaustedError, 429, "rate_limit_error", "queue_full"),
    (errors.UnavailableError, 503, "service_unavailable_error", None),
    (errors.PermissionDeniedError, 403, "permission_error", None),
    (errors.UnauthenticatedError, 401, "authentication_error", "invalid_api_key"),
    (errors.DataLossError, 500, "server_error", None),
    (ValidationError, 400, "invalid_request_error", None),
    (NotImplementedError, 501, "invalid_request_error", "not_implemented"),
    (TimeoutError, 504, "timeout_error", None),
    (MemoryError, 429, "rate_limit_error", None),
]

# gRPC field names that the HTTP API spells differently.
HTTP_FIELD_NAMES = OPENAI_NAMES


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, object]:
    return {"error": {"message": _encodable(message), "type": type_, "param": param and _encodable(param),
                      "code": code}}


def _encodable(text: str) -> str:
    """`text` with lone surrogates escaped: JSON may carry them (a request's "\\ud800" key), UTF-8 may not, and an
    error that echoes one must not fail to encode."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_parts(exc: BaseException) -> tuple[int, dict[str, object]]:
    """HTTP status and OpenAI error body for an exception (500 server_error for unexpected ones)."""
    for cls, status, type_, code in HTTP_BY_EXCEPTION:
        if isinstance(exc, cls):
            param = None
            if isinstance(exc, errors.InvalidArgumentError):
                param = HTTP_FIELD_NAMES.get(exc.field, exc.field) or None
            elif isinstance(exc, ValidationError) and exc.errors():
                param = ".".join(str(p) for p in exc.errors()[0]["loc"]) or None
            return status, error_body(_renamed(message_for(exc)), type_, param, code)
    return 500, error_body(f"internal error: {type(exc).__name__}", "server_error")


def _renamed(message: str) -> str:
    for grpc_name, http_name in HTTP_FIELD_NAMES.items():
        if message.startswith(f"{grpc_name}:"):
            return http_name + message[len(grpc_name):]
    return message


def error_response(exc: BaseException) -> JSONResponse:
    """The error's JSON response; a rate limit's carries `Retry-After` in whole seconds, rounded up (the openai
    client's retries wait that long)."""
    status, body = error_parts(exc)
    headers = None
    if isinstance(exc, errors.RateLimitedError):
        headers = {"Retry-After": str(math.ceil(exc.retry_after_seconds))}
    return JSONResponse(body, status_code=status, headers=headers)
