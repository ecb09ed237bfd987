"""Per-key limits (characters per minute, concurrent streams) and the loaded_models quota, through the real
client library (RESOURCE_EXHAUSTED + RetryInfo or QuotaFailure) and the openai client (429 + Retry-After)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import openai
import pytest
from chargpt_client import AsyncInferenceClient, ClientOptions, ResourceExhausted

from chargpt.server.tenancy.keys import create_key

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
    s, keys = await _limited(make_server, tmp_path, "generated_chars_per_minute = 10")
    async with _client(s, keys["grpc"]) as acme, _client(s, keys["other"]) as globex:
        assert len((await acme.generate("tiny", "a", max_new_tokens=20)).text) == 20  # admitted, then counted
        started = time.monotonic()
        with pytest.raises(ResourceExhausted) as refused:
            await acme.generate("tiny", "a", max_new_tokens=1)
        # 10 characters under a full bucket of 10: 11 to refill at 10 a minute, about 66 s.
        assert refused.value.retry_after is not None and 60 < refused.value.retry_after <= 66.1
        assert "generated_chars_per_minute" in refused.value.message and not refused.value.quota_violations
        # The client library does not retry RESOURCE_EXHAUSTED (its RetryPolicy is for UNAVAILABLE): one refusal.
        assert time.monotonic() - started < 5
        assert s.metric("chargpt_inference_tenant_rate_limited_total", tenant="acme",
                        limit="generated_chars_per_minute") == 1
        assert len((await globex.generate("tiny", "a", max_new_tokens=30)).text) == 30  # another tenant: unlimited
    assert s.metric("chargpt_inference_tenant_generated_chars_total", tenant="acme") == 20
    assert s.metric("chargpt_inference_tenant_requests_total", tenant="acme", outcome="finished") == 1
    assert s.metric("chargpt_inference_tenant_requests_total", tenant="acme", outcome="rate_limited") == 1
    async with _openai(s, keys["http"]) as http:  # the tenant's other key has its own minute
        await http.completions.create(model="tiny", prompt="a", max_tokens=20)
        with pytest.raises(openai.RateLimitError) as limited:
            await http.completions.create(model="tiny", prompt="a", max_tokens=1)
    retry_after = limited.value.response.headers["retry-after"]
    assert retry_after.isdigit() and 60 < int(retry_after) <= 67  # whole seconds, rounded up
    error = limited.value.response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"


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
