"""The gRPC side of tenancy: resolve each call's `authorization: Bearer <key>` and run its handler as that caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from chargpt.server.errors import rebuild_handler
from chargpt.server.tenancy.keys import KeyStore
from chargpt.server.tenancy.principal import Principal, acting_as

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
UNAUTHENTICATED_MESSAGE = "missing or invalid API key (send `authorization: Bearer <key>`)"


def bearer_key(header: str | bytes | None) -> str:
    """The key in an `Authorization: Bearer <key>` header value ("" when absent or malformed)."""
    text = header.decode("latin-1") if isinstance(header, bytes) else (header or "")
    scheme, _, key = text.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


async def resolve(store: KeyStore, key: str) -> Principal | None:
    """The caller for a key; a first sight of a key runs the (slow, by design) KDF off the event loop."""
    if not key:
        return None
    return store.cached(key) or await asyncio.to_thread(store.authenticate, key)


class TenantInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for calls without a valid key; every other call runs as its key's principal."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        header = next((v for k, v in handler_call_details.invocation_metadata or () if k == "authorization"), None)
        principal = await resolve(self.store, bearer_key(header))
        return _as_principal(handler, principal)


def _as_principal(handler: grpc.RpcMethodHandler, principal: Principal | None) -> grpc.RpcMethodHandler:
    """The same handler, run as `principal` (or answering UNAUTHENTICATED without running when None)."""
    if handler.response_streaming:
        behavior = handler.unary_stream or handler.stream_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if principal is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
            with acting_as(principal):  # type: ignore[arg-type]  # abort raised above when None
                async for item in behavior(request, context):
                    yield item
        return rebuild_handler(handler, stream)
    behavior = handler.unary_unary or handler.stream_unary

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if principal is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        with acting_as(principal):  # type: ignore[arg-type]
            return await behavior(request, context)
    return rebuild_handler(handler, unary)
