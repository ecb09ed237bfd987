"""The OpenAI-compatible HTTP API, driven by the official `openai` package and plain HTTP against a real server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from chargpt.v1 import inference_pb2
from tests.inference_service.conftest import Served, ServerFactory, write_checkpoint
from tests.inference_service.openai_api.conftest import base_url as _base
from tests.inference_service.openai_api.conftest import post as _post


async def test_openai_sync_client_completions_and_models(web: Served) -> None:
    client = openai.OpenAI(base_url=_base(web) + "/v1", api_key="unused", max_retries=0)

    def run() -> None:
        assert [m.id for m in client.models.list()] == ["tiny"]
        reply = client.completions.create(model="tiny", prompt="the cat ", max_tokens=12, seed=3,
                                          temperature=0.8, logprobs=3)
        choice = reply.choices[0]
        assert len(choice.text) == 12 and choice.finish_reason == "length"
        assert choice.logprobs is not None and choice.logprobs.tokens == list(choice.text)
        assert all(len(top) == 3 for top in choice.logprobs.top_logprobs or [])
        assert reply.usage is not None and reply.usage.completion_tokens == 12 and reply.usage.prompt_tokens == 8
        chunks = list(client.completions.create(model="tiny", prompt="the cat ", max_tokens=12, seed=3,
                                                temperature=0.8, stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    await asyncio.to_thread(run)


async def test_openai_async_client_same_seed_as_grpc(web: Served) -> None:
    client = openai.AsyncOpenAI(base_url=_base(web) + "/v1", api_key="unused", max_retries=0)
    args = {"max_tokens": 30, "seed": 11, "temperature": 0.9, "top_p": 0.95, "presence_penalty": 0.5,
            "frequency_penalty": 0.3, "stop": ["xq"]}
    reply = await client.completions.create(model="tiny", prompt=["the cat ", "a dog"], n=2,
                                            extra_body={"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.1},
                                            **args)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    grpc_reply = await web.stub.Generate(inference_pb2.GenerateRequest(
        model="tiny", prompt="a dog", max_new_tokens=30, seed=11, temperature=0.9, top_p=0.95, top_k=20, min_p=0.01,
        repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.3, stop=["xq"], n=2), timeout=30)
    assert [reply.choices[2].text, reply.choices[3].text] == [c.text for c in grpc_reply.choices]
    stream = await client.completions.create(model="tiny", prompt="a dog", n=2, stream=True,
                                             extra_body={"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.1},
                                             **args)
    texts = {0: "", 1: ""}
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.text
    assert [texts[0], texts[1]] == [c.text for c in grpc_reply.choices]


async def test_sse_framing_byte_for_byte(web: Served) -> None:
    body = {"model": "tiny", "prompt": "ab", "max_tokens": 1, "seed": 1, "temperature": 0}
    grpc_reply = await web.stub.Generate(inference_pb2.GenerateRequest(model="tiny", prompt="ab", max_new_tokens=1,
                                                                       temperature=0), timeout=30)
    reply = await _post(web, "/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    first = json.loads(reply.content.split(b"\n\n")[0].removeprefix(b"data: "))
    head = (f'{{"id":"{first["id"]}","object":"text_completion","created":{first["created"]},'
            f'"model":"tiny","choices":')
    text = json.dumps(grpc_reply.text)
    expected = (f'data: {head}[{{"index":0,"text":{text},"logprobs":null,"finish_reason":"length"}}]}}\n\n'
                f'data: {head}[],"usage":{{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}}}\n\n'
                "data: [DONE]\n\n")
    assert reply.content == expected.encode()


async def test_echo_score_health_and_chat(web: Served) -> None:
    reply = await _post(web, "/v1/completions", {"model": "tiny", "prompt": "the ", "max_tokens": 5, "echo": True})
    assert reply.json()["choices"][0]["text"].startswith("the ") and len(reply.json()["choices"][0]["text"]) == 9
    score = await _post(web, "/v1/score", {"model": "tiny", "text": "the cat sat"})
    grpc_score = await web.stub.Score(inference_pb2.ScoreRequest(model="tiny", text="the cat sat"), timeout=30)
    assert score.json()["mean_nll"] == pytest.approx(grpc_score.mean_nll)
    async with httpx.AsyncClient(base_url=_base(web)) as client:
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
    chat = await _post(web, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and "/v1/completions" in chat.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="chat template"):
        await openai.AsyncOpenAI(base_url=_base(web) + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"max_tokens": 0}, 400, "max_tokens"), ({"max_tokens": 10**6}, 400, "max_tokens"),
    ({"temperature": -1}, 400, "temperature"), ({"n": 99}, 400, "n"), ({"logprobs": 30}, 400, "logprobs"),
    ({"min_p": 2}, 400, "min_p"), ({"logit_bias": {"999": 1}}, 400, "logit_bias"), ({"best_of": 2}, 400, "best_of"),
    ({"prompt": "\u00e9"}, 400, "prompt"), ({"presence_penalty": 3}, 400, "presence_penalty"),
    ({"model": "nope"}, 404, None), ({"prompt": [1, 2]}, 400, "prompt")])
async def test_errors_are_openai_shaped(web: Served, body: dict[str, Any], status: int, param: str | None) -> None:
    reply = await _post(web, "/v1/completions", {"model": "tiny", "prompt": "a", **body})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param


async def test_auth_and_queue_full(make_server: ServerFactory) -> None:
    s: Served = await make_server(http_port=0, auth_token="s3cret", max_queue=0)
    write_checkpoint(s.models_dir / "tiny")
    body = {"model": "tiny", "prompt": "a", "max_tokens": 2}
    denied = await _post(s, "/v1/completions", body)
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
    async with httpx.AsyncClient(base_url=_base(s)) as client:
        assert (await client.get("/health")).status_code == 200  # probes need no token
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(base_url=_base(s) + "/v1", api_key="wrong", max_retries=0).models.list()
    headers = {"Authorization": "Bearer s3cret"}
    missing = await _post(s, "/v1/completions", body, headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    metadata = (("authorization", "Bearer s3cret"),)
    await s.stub.LoadModel(inference_pb2.LoadModelRequest(name="tiny", checkpoint_path="tiny"), metadata=metadata)
    full = await _post(s, "/v1/completions", body, headers=headers)
    assert full.status_code == 429 and full.json()["error"]["type"] == "rate_limit_error"


async def test_disconnect_mid_stream_frees_the_slot(web: Served) -> None:
    engine = web.server.registry.models["tiny"].engine
    body = {"model": "tiny", "prompt": "a", "max_tokens": 4000, "stream": True}
    async with httpx.AsyncClient(base_url=_base(web), timeout=30) as client, \
            client.stream("POST", "/v1/completions", json=body) as reply:
        async for _line in reply.aiter_lines():
            break
        assert len(engine.active) == 1
    for _ in range(200):
        if not engine.active:
            break
        await asyncio.sleep(0.02)
    assert not engine.active
    assert web.metric("chargpt_inference_request_failure_total", model="tiny", reason="cancelled") == 1
    assert web.metric("chargpt_inference_http_requests_total", route="/v1/completions", status="200") >= 1
