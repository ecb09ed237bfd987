"""Streamed completions as the reference sends them: the usage chunk (choices: []) only when
stream_options.include_usage asks for it, vLLM's continuous_usage_stats, and the SDK's documented loop."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.inference_service.conftest import Served
from tests.inference_service.openai_api.conftest import async_client, post, sync_client

ARGS: dict[str, Any] = {"model": "tiny", "prompt": "the cat ", "max_tokens": 20, "seed": 5}


async def test_the_sdk_documented_loop_works_without_stream_options(web: Served) -> None:
    """`for chunk in stream: chunk.choices[0].text`: every chunk has a choice and none carries usage."""
    def run() -> tuple[str, list[Any]]:
        chunks = list(sync_client(web).completions.create(**ARGS, stream=True))
        return "".join(chunk.choices[0].text for chunk in chunks), chunks

    text, chunks = await asyncio.to_thread(run)
    assert len(text) == 20 and all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    stream = await async_client(web).completions.create(**ARGS, stream=True, stream_options=None)
    assert "".join([chunk.choices[0].text async for chunk in stream]) == text


@pytest.mark.parametrize("options", [{"include_usage": False}, {"include_usage": None}, {},
                                     {"include_usage": False, "continuous_usage_stats": True}])
async def test_no_usage_chunk_unless_asked(web: Served, options: dict[str, Any]) -> None:
    events = await _events(web, {**ARGS, "stream": True, "stream_options": options})
    assert all(len(e["choices"]) == 1 and "usage" not in e for e in events)


async def test_include_usage_ends_with_one_usage_chunk(web: Served) -> None:
    stream = await async_client(web).completions.create(**ARGS, n=2, stream=True,
                                                        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (8, 40, 48)
    assert all(chunk.choices and chunk.usage is None for chunk in chunks[:-1])


async def test_continuous_usage_stats_put_the_usage_so_far_on_every_chunk(web: Served) -> None:
    events = await _events(web, {**ARGS, "stream": True,
                                 "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    counts = [e["usage"]["completion_tokens"] for e in events]
    assert all(e["usage"]["prompt_tokens"] == 8 for e in events)
    assert counts == sorted(counts) and counts[-1] == 20 and events[-1]["choices"] == []
    released = 0
    for event in events[:-1]:
        released += len(event["choices"][0]["text"])
        assert event["usage"]["completion_tokens"] == released
        assert event["usage"]["total_tokens"] == 8 + released


@pytest.mark.parametrize("body", [{"stream_options": {"include_usage": True}},
                                  {"stream": False, "stream_options": {"include_usage": True}},
                                  {"stream": True, "stream_options": {"include_usage": "often"}},
                                  {"stream": True, "stream_options": {"usage": True}},
                                  {"stream": True, "stream_options": [True]}])
async def test_bad_stream_options_are_400_naming_them(web: Served, body: dict[str, Any]) -> None:
    reply = await post(web, "/v1/completions", {**ARGS, **body})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "stream_options", reply.text


async def _events(s: Served, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream's JSON events; asserts that it ends with `data: [DONE]`."""
    reply = await post(s, "/v1/completions", body)
    assert reply.status_code == 200, reply.text
    lines = [line.removeprefix("data: ") for line in reply.text.split("\n\n") if line]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]
