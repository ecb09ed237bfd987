"""Fixtures for the OpenAI-compatible API: a real server with its HTTP port open and model "tiny" loaded."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.inference_service.conftest import Served, ServerFactory, write_checkpoint


@pytest.fixture
async def web(make_server: ServerFactory) -> Served:
    s: Served = await make_server(http_port=0)
    write_checkpoint(s.models_dir / "tiny")
    await s.load("tiny", "tiny")
    return s


def base_url(s: Served) -> str:
    return f"http://127.0.0.1:{s.server.http.port}"


async def post(s: Served, path: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url(s), timeout=30) as client:
        return await client.post(path, json=body, **kwargs)


def sync_client(s: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url(s) + "/v1", api_key="unused", max_retries=0)


def async_client(s: Served) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url(s) + "/v1", api_key="unused", max_retries=0)
