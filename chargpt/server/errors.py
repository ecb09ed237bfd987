"""The one place exceptions become gRPC statuses: a table per exception class, field details, an aio interceptor."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from pydantic import ValidationError

from chargpt import errors
from chargpt.errors import FieldViolation

log = logging.getLogger(__name__)

# Most specific first: the first matching class wins.
STATUS_BY_EXCEPTION: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (errors.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.DataLossError, grpc.StatusCode.DATA_LOSS),
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (OSError, grpc.StatusCode.UNAVAILABLE),  # e.g. a full disk: the request failed, the server is fine
]


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls, code in STATUS_BY_EXCEPTION:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


# Messages quote offending values; gRPC sends them percent-encoded in a header that clients cap at 16 KiB, so an
# unbounded quote of a huge input would turn a clear status into a RESOURCE_EXHAUSTED metadata overflow.
MAX_MESSAGE_CHARS = 600


def message_for(exc: BaseException) -> str:
    message = _full_message(exc)
    if len(message) > MAX_MESSAGE_CHARS:
        return message[:MAX_MESSAGE_CHARS] + f"… ({len(message) - MAX_MESSAGE_CHARS} more characters)"
    return message


def _full_message(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{v.field}: {v.description}" for v in violations_for(exc))
    if isinstance(exc, NotImplementedError):
        return str(exc) or "not implemented yet"
    if isinstance(exc, OSError) and not isinstance(exc, errors.ChargptError):
        return f"storage error: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__


def violations_for(exc: BaseException) -> list[FieldViolation]:
    """The bad request fields an exception names (none for errors that are not about a field)."""
    if isinstance(exc, errors.InvalidArgumentError):
        return exc.violations
    if isinstance(exc, ValidationError):
        return [FieldViolation(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
    return []


# The details travel base64-encoded in the grpc-status-details-bin trailer, beside the message: kept well under
# the 8 KiB that gRPC clients accept for all metadata by default.
MAX_DETAILS_BYTES = 4096
MAX_DESCRIPTION_CHARS = 300


def status_metadata(code: grpc.StatusCode, message: str,
                    exc: BaseException) -> tuple[tuple[str, str | bytes], ...]:
    """The trailing metadata of a google.rpc.Status carrying the exception's details: BadRequest for bad fields,
    QuotaFailure for a tenant's quota, RetryInfo for a rate limit (empty when it has none)."""
    details = [detail for detail in (_bad_request(violations_for(exc)), _quota_failure(exc), _retry_info(exc))
               if detail is not None]
    if not details:
        return ()
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return tuple(rpc_status.to_status(status).trailing_metadata)


def _bad_request(violations: list[FieldViolation]) -> error_details_pb2.BadRequest | None:
    if not violations:
        return None
    bad_request = error_details_pb2.BadRequest()
    for v in violations:
        description = v.description
        if len(description) > MAX_DESCRIPTION_CHARS:
            description = description[:MAX_DESCRIPTION_CHARS] + "…"
        bad_request.field_violations.add(field=v.field[:MAX_DESCRIPTION_CHARS], description=description)
        if bad_request.ByteSize() > MAX_DETAILS_BYTES:  # the message still names them all
            del bad_request.field_violations[-1]
            break
    return bad_request


def _quota_failure(exc: BaseException) -> error_details_pb2.QuotaFailure | None:
    if not isinstance(exc, errors.QuotaExceededError):
        return None
    failure = error_details_pb2.QuotaFailure()
    failure.violations.add(subject=f"tenant:{exc.tenant}"[:MAX_DESCRIPTION_CHARS],
                           description=f"{exc.quota}: {exc.description}"[:MAX_DESCRIPTION_CHARS])
    return failure


def _retry_info(exc: BaseException) -> error_details_pb2.RetryInfo | None:
    if not isinstance(exc, errors.RateLimitedError):
        return None
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromNanoseconds(int(exc.retry_after_seconds * 1e9))
    return info


RpcObserver = Callable[[str, grpc.StatusCode], None]


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns exceptions escaping a handler into a status from the table; reports every RPC's final code."""

    def __init__(self, observer: RpcObserver | None = None) -> None:
        self._observer = observer

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        if handler.unary_unary or handler.stream_unary:
            return rebuild_handler(handler, self._wrap_unary(method, handler.unary_unary or handler.stream_unary))
        return rebuild_handler(handler, self._wrap_stream(method, handler.unary_stream or handler.stream_stream))

    def _wrap_unary(self, method: str, behavior: Any) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                await self._fail(method, context, exc)
                raise
            self._done(method, context)
            return response
        return wrapper

    def _wrap_stream(self, method: str, behavior: Any) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                await self._fail(method, context, exc)
                raise
            self._done(method, context)
        return wrapper

    def _done(self, method: str, context: grpc.aio.ServicerContext) -> None:
        code = context.code() if hasattr(context, "code") else None
        self._observe(method, code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK)

    async def _fail(self, method: str, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        """Abort with the mapped status; cancellations and explicit aborts pass through untouched."""
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):  # GeneratorExit: a stream closed early
            self._observe(method, grpc.StatusCode.CANCELLED)
            return
        if isinstance(exc, grpc.aio.AbortError):
            code = context.code() if hasattr(context, "code") else None
            self._observe(method, code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN)
            return
        code = status_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("unhandled error in %s", method, exc_info=exc)
        self._observe(method, code)
        message = message_for(exc)
        await context.abort(code, message, trailing_metadata=status_metadata(code, message, exc))

    def _observe(self, method: str, code: grpc.StatusCode) -> None:
        if self._observer is not None:
            self._observer(method, code)


def rebuild_handler(handler: grpc.RpcMethodHandler, behavior: Any) -> grpc.RpcMethodHandler:
    """A handler of the same kind and (de)serializers with a new behaviour."""
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return factory(behavior, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)
