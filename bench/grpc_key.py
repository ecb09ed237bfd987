"""gRPC client interceptors that send a bearer key on every call of a channel, as the services' tenants do."""

from __future__ import annotations

from typing import Any

import grpc


class _BearerKey:
    """Adds `authorization: Bearer <key>` to a call's metadata."""

    def __init__(self, key: str) -> None:
        self.key = key

    def _with_key(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()), ("authorization", f"Bearer {self.key}"))
        return details._replace(metadata=metadata)


class _UnaryUnaryKey(_BearerKey, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_key(details), request)


class _UnaryStreamKey(_BearerKey, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_key(details), request)


class _StreamUnaryKey(_BearerKey, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._with_key(details), request_iterator)


def bearer_key(key: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors sending the key on every call of a channel (the soak's stubs stay untouched); one per kind of
    call, as grpc.aio files an interceptor under the first kind it implements only."""
    return [_UnaryUnaryKey(key), _UnaryStreamKey(key), _StreamUnaryKey(key)]
