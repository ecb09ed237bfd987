"""Per-key limits (characters per minute, concurrent streams) and the loaded_models quota, through the real
client library (RESOURCE_EXHAUSTED + RetryInfo or QuotaFailure) and the openai client (429 + Retry-After)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import openai
import pytest
from chargpt_client import AsyncInferenceClient, ClientOptions, InvalidArgument, ResourceExhausted

from chargpt.errors import InvalidArgumentError, QuotaExceededError, RateLimitedError
from chargpt.server.tenancy.keys import create_key
from chargpt.server.tenancy.policy import TenantLimits
from chargpt.server.tenancy.principal import Principal, Role
from inference_service.rate_limits import KeyLimiter

from .conftest import Served, ServerFactory, write_checkpoint

LONG = 1_000_000  # characters: a generation that runs until the test closes it


async def _limited(make_server: ServerFactory, tmp_path: Path, limits: str) -> tuple[Served, dict[str, str]]:
    """A server whose tenant acme has `limits`; keys: acme's members "grpc" and "http" and its admin "operator",
    globex's member "other"."""
    keys_file, tenants_file = tmp_path / "keys.json", tmp_path / "tenants.toml"
    tenants_file.write_text(f"[tenants.acme]\n{limits}\n")
    owners = {"grpc": ("acme", "member"), "http": ("acme", "member"), "operator": ("acme", "admin"),
              "other": ("globex", "member")}
    keys = {who: create_key(keys_file, tenant, role)[0] for who, (tenant, role) in owners.items()}
    write_checkpoint(tmp_path / "models" / "tiny")
    s: Served = await make_server(http_port=0, keys_file=keys_file, tenants_file=tenants_file, preload="tiny=tiny",
                                  max_new_tokens_limit=LONG)
    return s, keys


def _client(s: Served, key: str) -> AsyncInferenceClient:
    return AsyncInferenceClient(f"127.0.0.1:{s.port}", ClientOptions(token=key, timeout=30))  # default retries


def _openai(s: Served, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{s.server.http.port}/v1", api_key=key, max_retries=0)


async def test_characters_per_minute(make_server: ServerFactory, tmp_path: Path) -> None:
    s, keys = await _limited(make_server, tmp_path, "generated_chars_per_minute = 30")
    async with _client(s, keys["grpc"]) as acme, _client(s, keys["other"]) as globex:
        assert len((await acme.generate("tiny", "a", max_new_tokens=20)).text) == 20  # reserved 20 of 30
        started = time.monotonic()
        with pytest.raises(ResourceExhausted) as refused:  # 20 more do not fit the 10 left
            await acme.generate("tiny", "a", max_new_tokens=20)
        # 10 characters short, refilled at 30 a minute: about 20 s.
        assert refused.value.retry_after is not None and 15 < refused.value.retry_after <= 20.1
        assert "generated_chars_per_minute" in refused.value.message and not refused.value.quota_violations
        # The client library does not retry RESOURCE_EXHAUSTED (its RetryPolicy is for UNAVAILABLE): one refusal.
        assert time.monotonic() - started < 5
        with pytest.raises(InvalidArgument) as never:  # more than a minute's worth can never be admitted
            await acme.generate("tiny", "a", max_new_tokens=31)
        assert never.value.field == "max_new_tokens"
        assert s.metric("chargpt_inference_tenant_rate_limited_total", tenant="acme",
                        limit="generated_chars_per_minute") == 1
        assert len((await globex.generate("tiny", "a", max_new_tokens=40)).text) == 40  # another tenant: unlimited
    assert s.metric("chargpt_inference_tenant_generated_chars_total", tenant="acme") == 20
    assert s.metric("chargpt_inference_tenant_requests_total", tenant="acme", outcome="finished") == 1
    assert s.metric("chargpt_inference_tenant_requests_total", tenant="acme", outcome="rate_limited") == 1
    async with _openai(s, keys["http"]) as http:  # the tenant's other key has its own minute
        await http.completions.create(model="tiny", prompt="a", max_tokens=20)
        with pytest.raises(openai.RateLimitError) as limited:
            await http.completions.create(model="tiny", prompt="a", max_tokens=20)
    retry_after = limited.value.response.headers["retry-after"]
    assert retry_after.isdigit() and 15 < int(retry_after) <= 21  # whole seconds, rounded up
    error = limited.value.response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"


def test_unused_reserved_characters_are_refunded() -> None:
    limiter = KeyLimiter(clock=lambda: 0.0)  # a frozen clock: no refill, only what leases reserve and refund
    caller, limits = Principal("acme", Role.MEMBER, "k1"), TenantLimits(generated_chars_per_minute=30)
    lease = limiter.admit(caller, limits, reserve=25)
    with pytest.raises(RateLimitedError):  # 5 left
        limiter.admit(caller, limits, reserve=10)
    lease.add_chars(5)  # it stopped early (a stop string): 20 of its 25 go back
    lease.release()
    limiter.admit(caller, limits, reserve=25).release()
    with pytest.raises(InvalidArgumentError, match="max_new_tokens"):
        limiter.admit(caller, limits, reserve=31)


def test_a_limit_of_zero_is_a_quota_not_a_wait() -> None:
    """No wait meets a limit of 0 (issue 26: it answered "retry later"): a QuotaExceededError saying so."""
    limiter, caller = KeyLimiter(clock=lambda: 0.0), Principal("acme", Role.MEMBER, "k1")
    for name in ("generated_chars_per_minute", "concurrent_streams"):
        with pytest.raises(QuotaExceededError) as refused:
            limiter.admit(caller, TenantLimits.model_validate({name: 0}), reserve=5)
        assert refused.value.quota == name and "the limit is 0" in refused.value.description


async def test_a_limit_of_zero_carries_no_retry(make_server: ServerFactory, tmp_path: Path) -> None:
    """A QuotaFailure only: no RetryInfo over gRPC, no Retry-After on the 429 over HTTP."""
    s, keys = await _limited(make_server, tmp_path, "concurrent_streams = 0")
    async with _client(s, keys["grpc"]) as acme:
        with pytest.raises(ResourceExhausted) as refused:
            await acme.generate("tiny", "a", max_new_tokens=2)
    assert refused.value.retry_after is None and "the limit is 0" in refused.value.message
    [violation] = refused.value.quota_violations
    assert violation.subject == "tenant:acme" and violation.description.startswith("concurrent_streams: ")
    async with _openai(s, keys["http"]) as http:
        with pytest.raises(openai.RateLimitError) as limited:
            await http.completions.create(model="tiny", prompt="a", max_tokens=2)
    assert "retry-after" not in limited.value.response.headers and "the limit is 0" in limited.value.message
    assert s.metric("chargpt_inference_tenant_rate_limited_total", tenant="acme", limit="concurrent_streams") == 2


async def _until(condition: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_concurrent_streams(make_server: ServerFactory, tmp_path: Path) -> None:
    s, keys = await _limited(make_server, tmp_path, "concurrent_streams = 1")
    async with _client(s, keys["grpc"]) as acme:
        stream = acme.generate_stream("tiny", "a", max_new_tokens=LONG)
        async with stream:
            async for _ in stream:
                break  # in flight
            with pytest.raises(ResourceExhausted) as refused:
                await acme.generate("tiny", "a", max_new_tokens=2)
            assert refused.value.retry_after == 1.0 and "concurrent_streams" in refused.value.message
            async with _openai(s, keys["http"]) as http:  # the same tenant's other key: its own streams
                assert (await http.completions.create(model="tiny", prompt="a", max_tokens=2)).choices
        assert s.metric("chargpt_inference_tenant_rate_limited_total", tenant="acme", limit="concurrent_streams") == 1

        async def admitted() -> bool:  # the closed stream's slot is freed once the server sees the cancel
            try:
                return len((await acme.generate("tiny", "a", max_new_tokens=2)).text) == 2
            except ResourceExhausted:
                return False
        await _until(admitted)
    assert s.metric("chargpt_inference_tenant_requests_total", tenant="acme", outcome="cancelled") == 1


async def test_loaded_models_quota(make_server: ServerFactory, tmp_path: Path) -> None:
    s, keys = await _limited(make_server, tmp_path, "loaded_models = 1")
    write_checkpoint(s.models_dir / "other", seed=2)
    async with _client(s, keys["operator"]) as acme:
        assert (await acme.load_model("mine", checkpoint_path="other")).loaded  # the shared "tiny" is not counted
        assert not (await acme.load_model("mine", checkpoint_path="other")).loaded  # the same load: no new model
        with pytest.raises(ResourceExhausted) as over:
            await acme.load_model("second", checkpoint_path="other")
        [violation] = over.value.quota_violations
        assert violation.subject == "tenant:acme" and violation.description.startswith("loaded_models: ")
        assert sorted(m.name for m in await acme.list_models()) == ["mine", "tiny"]  # nothing half-created
        await acme.unload_model("mine")
        assert (await acme.load_model("second", checkpoint_path="other")).loaded
