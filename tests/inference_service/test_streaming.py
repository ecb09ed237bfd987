"""Stream messages carry everything produced since the previous one: a handler that lags (its writes stall, the
loop is busy) sends fewer, fuller messages with the same text, logprobs and summary, and never more than one
per step. A pausing *client* does not make the server lag until HTTP/2 or TCP flow control pushes back (the
transport buffers hundreds of KB), so the lag tests pause the server-side consumer itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest

from chargpt.sampling_params import SamplingParams
from chargpt.v1 import inference_pb2
from inference_service.engine.request import Chunk, Delta, Finish, Outbox, Summary
from inference_service.grpc_api.messages import sampling_params
from inference_service.logprobs import TokenLogprob
from inference_service.openai_api import completions
from inference_service.openai_api.schemas import CompletionRequest
from inference_service.service import InferenceService

from .conftest import Served, ServerFactory, write_checkpoint

Req = inference_pb2.GenerateRequest
LONG = 150  # characters: many decode steps, so a paused reader falls well behind


def _summary(index: int) -> Summary:
    return Summary(Finish.LENGTH, 1, 3, 0, 0, 0.0, 0.0, 0.0, "", SamplingParams(), index=index)


async def test_outbox_coalesces_per_sample_and_wakes_once_per_delivery() -> None:
    outbox = Outbox()
    lp = TokenLogprob("b", -0.5, (("b", -0.5),))
    outbox.add(Delta(1, "a", []))
    outbox.add(Delta(0, "x", []))
    outbox.add(Delta(1, "b", [lp]))  # a second step before the reader ran
    outbox.add(_summary(1))
    chunks = await outbox.take()
    assert [(c.index, c.text, c.logprobs, c.summary is not None) for c in chunks] == [
        (1, "ab", [lp], True), (0, "x", [], False)]
    waiting = asyncio.create_task(outbox.take())
    await asyncio.sleep(0.01)
    assert not waiting.done()  # nothing pending: the reader sleeps until the next delivery
    outbox.add(Delta(0, "y", []))
    assert [(c.index, c.text) for c in await waiting] == [(0, "y")]


async def _grpc_messages(s: Served, pause: float, **fields: Any) -> list[inference_pb2.GenerateStreamResponse]:
    """A stream's messages; the reader stops for `pause` seconds after the first one."""
    messages = []
    async for message in s.stub.GenerateStream(Req(model="tiny", **fields), timeout=60):
        messages.append(message)
        if len(messages) == 1:
            await asyncio.sleep(pause)
    return messages


@pytest.mark.parametrize("fields", [
    {"prompt": "to be", "max_new_tokens": LONG, "seed": 5, "temperature": 1.0, "logprobs": 2},
    {"prompt": "a", "max_new_tokens": LONG, "seed": 9, "temperature": 1.2, "stop": ["e "], "n": 2},
])
async def test_grpc_slow_reader_gets_the_same_stream(served: Served, fields: dict[str, Any]
                                                                       ) -> None:
    fast = await _grpc_messages(served, 0.0, **fields)
    slow = await _grpc_messages(served, 0.5, **fields)
    for index in range(fields.get("n", 1)):
        fast_text = "".join(m.text for m in fast if m.index == index)
        slow_text = "".join(m.text for m in slow if m.index == index)
        assert slow_text == fast_text and fast_text
        summaries = [m.summary for m in slow if m.index == index and m.HasField("summary")]
        assert len(summaries) == 1 and summaries[0].generated_tokens >= len(slow_text)
        steps = summaries[0].generated_tokens
        assert len([m for m in fast if m.index == index]) <= steps + 1  # at most one per step (+ the summary)
        if fields.get("logprobs"):  # one entry per character, aligned with the text
            entries = [e for m in slow if m.index == index for e in m.logprobs]
            assert "".join(e.token for e in entries) == slow_text


async def test_lagging_handler_gets_the_backlog_in_one_chunk_per_sample(served: Served) -> None:
    """Generation.chunks, which GenerateStream writes from: paused after its first chunk, it then yields what
    was produced meanwhile as one chunk per sample, with the fast reader's text and aligned logprobs."""
    service = InferenceService(served.server.registry.settings, served.server.registry, served.server.metrics)
    request = Req(model="tiny", prompt="to be", max_new_tokens=LONG, seed=3, temperature=1.0, logprobs=1, n=2)

    async def read(pause: float) -> list[Chunk]:
        generation = service.generate(request.model, request.prompt, sampling_params(request), None)
        chunks = []
        async with contextlib.aclosing(generation.chunks()) as stream:
            async for chunk in stream:
                chunks.append(chunk)
                if len(chunks) == 1:
                    await asyncio.sleep(pause)
        return chunks

    fast, slow = await read(0.0), await read(0.5)
    for index in (0, 1):
        text = "".join(c.text for c in slow if c.index == index)
        assert text == "".join(c.text for c in fast if c.index == index) and len(text) == LONG
        assert "".join(e.token for c in slow if c.index == index for e in c.logprobs) == text
    assert len(fast) > 8 and len(slow) <= 4  # first chunk(s), then the backlog per sample


async def test_lagging_sse_writer_gets_one_event_per_choice(make_server: ServerFactory) -> None:
    """The HTTP stream of two prompts (two runs merged), paused after its first event, finishes its first batch
    (an event per choice at most) and then sends the backlog as one event per choice."""
    s: Served = await make_server(http_port=0)
    write_checkpoint(s.models_dir / "tiny")
    await s.load("tiny", "tiny")
    service = InferenceService(s.server.registry.settings, s.server.registry, s.server.metrics)
    body = CompletionRequest(model="tiny", prompt=["to be", "or not"], max_tokens=LONG, seed=2, stream=True,
                             stream_options={"include_usage": False})
    events = []
    async with contextlib.aclosing(completions.stream(body, completions.start_runs(service, body))) as sse:
        async for event in sse:
            events.append(event)
            if len(events) == 1:
                await asyncio.sleep(0.5)
    parsed = [json.loads(e[6:]) for e in events if e.startswith(b"data: {")]
    assert sum(len(c["text"]) for p in parsed for c in p["choices"]) == 2 * LONG
    assert len(parsed) <= 2 + 2 and events[-1] == b"data: [DONE]\n\n"


async def test_grpc_cancel_after_a_pause_frees_the_slot(served: Served) -> None:
    engine = served.server.registry.models["tiny"].engine
    call = served.stub.GenerateStream(Req(model="tiny", prompt="a", max_new_tokens=4000), timeout=60)
    await call.read()
    await asyncio.sleep(0.2)  # the reader lags while characters pile up
    call.cancel()
    for _ in range(200):
        if not engine.active:
            break
        await asyncio.sleep(0.02)
    assert not engine.active


async def _http_events(s: Served, pause: float, body: dict[str, Any]) -> list[dict[str, Any]]:
    events = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.server.http.port}", timeout=30) as client, \
            client.stream("POST", "/v1/completions", json=body) as reply:
        async for line in reply.aiter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                if len(events) == 1:
                    await asyncio.sleep(pause)
    return events


async def test_http_slow_reader_gets_the_same_text(make_server: ServerFactory) -> None:
    s: Served = await make_server(http_port=0)
    write_checkpoint(s.models_dir / "tiny")
    await s.load("tiny", "tiny")
    body = {"model": "tiny", "prompt": ["to be", "or not"], "max_tokens": LONG, "seed": 4, "temperature": 1.0,
            "n": 2, "stream": True, "logprobs": 1, "stream_options": {"include_usage": True}}
    fast, slow = await _http_events(s, 0.0, body), await _http_events(s, 0.5, body)

    def texts(events: list[dict[str, Any]]) -> dict[int, str]:
        out: dict[int, str] = {}
        for event in events:
            for choice in event["choices"]:
                out[choice["index"]] = out.get(choice["index"], "") + choice["text"]
                assert len(choice["logprobs"]["tokens"]) == len(choice["text"])  # aligned per character
        return out

    assert texts(slow) == texts(fast) and len(texts(fast)) == 4
    assert all(len(t) == LONG for t in texts(fast).values())
    assert slow[-1]["usage"]["completion_tokens"] == 4 * LONG


async def test_latency_metrics_count_characters_not_messages(served: Served) -> None:
    """TTFT once per sample and one inter-token gap per later character, however the stream was coalesced."""
    messages = await _grpc_messages(served, 0.3, prompt="a", max_new_tokens=50, seed=1, n=2)
    assert sum(len(m.text) for m in messages) == 100
    assert served.metric("chargpt_inference_time_to_first_token_seconds_count", model="tiny") == 2
    assert served.metric("chargpt_inference_inter_token_latency_seconds_count", model="tiny") == 2 * 49
