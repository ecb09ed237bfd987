"""Quota and rate-limit refusals on the wire: RESOURCE_EXHAUSTED with google.rpc QuotaFailure / RetryInfo details,
read back by the client's `ResourceExhausted` (a tiny servicer behind the real interceptors raises them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from chargpt_client import ResourceExhausted
from chargpt_client.errors import QuotaViolation, from_rpc_error

from chargpt import errors
from chargpt.server.errors import ErrorInterceptor
from chargpt.server.tenancy.interceptor import TenantInterceptor
from chargpt.server.tenancy.keys import KeyStore, create_key
from chargpt.server.tenancy.policy import TenantPolicy
from chargpt.server.tenancy.principal import current_principal

TENANTS = "[defaults]\nqueued_jobs = 1\n[tenants.acme]\nqueued_jobs = 0\n"


def _queue_job(policy: TenantPolicy) -> Callable[[bytes, Any], Any]:
    async def handler(request: bytes, context: Any) -> bytes:
        tenant = current_principal().tenant
        policy.limits(tenant).check(tenant, "queued_jobs", used=int(request or b"0"))
        return tenant.encode()
    return handler


async def _rate_limited(request: bytes, context: Any) -> bytes:
    raise errors.RateLimitedError("generated_chars_per_minute", "6,000 characters a minute", 2.5)


async def _stream_rate_limited(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    raise errors.RateLimitedError("concurrent_streams", "2 in flight", 0.25)


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[tuple[str, str, str]]:
    """A server with the real interceptors; its address and two tenants' keys (acme: no queue room)."""
    keys = tmp_path / "keys.json"
    acme, _ = create_key(keys, "acme", "member")
    globex, _ = create_key(keys, "globex", "member")
    (tmp_path / "tenants.toml").write_text(TENANTS)
    handlers = {"QueueJob": grpc.unary_unary_rpc_method_handler(_queue_job(TenantPolicy(tmp_path / "tenants.toml"))),
                "Generate": grpc.unary_unary_rpc_method_handler(_rate_limited),
                "GenerateStream": grpc.unary_stream_rpc_method_handler(_stream_rate_limited)}
    server = grpc.aio.server(interceptors=[TenantInterceptor(KeyStore(keys)), ErrorInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Limited", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", acme, globex
    await server.stop(0)


async def _call(address: str, key: str, method: str, request: bytes = b"") -> bytes | grpc.aio.AioRpcError:
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            if method == "GenerateStream":
                return b"".join([chunk async for chunk in channel.unary_stream(f"/test.Limited/{method}")(
                    request, metadata=metadata, timeout=10)])
            return bytes(await channel.unary_unary(f"/test.Limited/{method}")(request, metadata=metadata, timeout=10))
        except grpc.aio.AioRpcError as err:
            return err


def _client_error(result: bytes | grpc.aio.AioRpcError) -> ResourceExhausted:
    assert isinstance(result, grpc.aio.AioRpcError), result
    assert result.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    error = from_rpc_error(result)
    assert isinstance(error, ResourceExhausted)
    return error


async def test_a_quota_names_the_tenant_and_the_quota(limited: tuple[str, str, str]) -> None:
    address, acme, globex = limited
    assert await _call(address, globex, "QueueJob") == b"globex"  # each handler runs as its caller
    error = _client_error(await _call(address, acme, "QueueJob"))
    assert error.quota_violations == [QuotaViolation("tenant:acme", "queued_jobs: 0 used of 0, this request needs "
                                                                    "1 more")]
    assert error.retry_after is None and "quota queued_jobs of tenant 'acme' exceeded" in error.message
    other = _client_error(await _call(address, globex, "QueueJob", b"1"))
    assert [v.subject for v in other.quota_violations] == ["tenant:globex"]


async def test_a_rate_limit_carries_retry_info(limited: tuple[str, str, str]) -> None:
    address, acme, _ = limited
    error = _client_error(await _call(address, acme, "Generate"))
    assert error.retry_after == pytest.approx(2.5) and error.quota_violations == []
    assert "rate limit generated_chars_per_minute reached" in error.message


async def test_a_rate_limit_mid_stream_carries_retry_info(limited: tuple[str, str, str]) -> None:
    address, acme, _ = limited
    error = _client_error(await _call(address, acme, "GenerateStream"))
    assert error.retry_after == pytest.approx(0.25)


async def test_without_a_key_the_handler_never_runs(limited: tuple[str, str, str]) -> None:
    result = await _call(limited[0], "nope", "QueueJob")
    assert isinstance(result, grpc.aio.AioRpcError) and result.code() is grpc.StatusCode.UNAUTHENTICATED
    assert from_rpc_error(result).code is grpc.StatusCode.UNAUTHENTICATED
