"""Constrained generation end to end: gRPC, the client library and the `openai` SDK against a real server."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import grpc
import jsonschema
import openai
import pytest
import regex as partial_regex
from chargpt_client import AsyncInferenceClient, InvalidArgument

from chargpt.v1 import inference_pb2

from .conftest import VOCAB, Served, ServerFactory, write_checkpoint

Req = inference_pb2.GenerateRequest
SPEAKER = "[A-Z][A-Z]+:\n[a-z ,.]+"
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "ok": {"type": "boolean"}},
          "required": ["name", "ok"]}


async def _generate(s: Served, **fields: Any) -> inference_pb2.GenerateResponse:
    reply: inference_pb2.GenerateResponse = await s.stub.Generate(Req(model="tiny", **fields), timeout=60)
    return reply


async def test_grpc_regex_choices_and_length_limit(served: Served) -> None:
    for seed in range(4):
        reply = await _generate(served, prompt="\n", regex=SPEAKER, max_new_tokens=200, seed=seed)
        assert re.fullmatch(SPEAKER, reply.text), reply.text
        assert reply.summary.finish_reason == inference_pb2.FINISH_REASON_STOP
        picked = await _generate(served, choices=["yes", "no", "yes sir"], seed=seed, temperature=0.5 * seed)
        assert picked.text in ("yes", "no", "yes sir")
        assert picked.summary.finish_reason == inference_pb2.FINISH_REASON_STOP
    words = "[a-z]+(?: [a-z]+)*!"
    for seed in range(4):
        cut = await _generate(served, regex=words, max_new_tokens=6, seed=seed)
        if cut.summary.finish_reason == inference_pb2.FINISH_REASON_LENGTH:  # a prefix some match extends
            assert len(cut.text) == 6 and partial_regex.fullmatch(words, cut.text, partial=True), cut.text
        else:
            assert re.fullmatch(words, cut.text), cut.text


async def test_grpc_logprobs_come_from_the_constrained_distribution(served: Served) -> None:
    reply = await _generate(served, choices=["ab", "ba"], logprobs=5, seed=3)
    first = reply.logprobs[0]
    assert {t.token for t in first.top_logprobs} == {"a", "b"}  # only what the constraint allowed
    total = sum(pow(2.718281828459045, t.logprob) for t in first.top_logprobs)
    assert total == pytest.approx(1.0, abs=1e-5)  # renormalised over the allowed characters
    assert reply.logprobs[1].logprob == pytest.approx(0.0, abs=1e-6)  # the second character was forced


async def test_grpc_mixed_batch_rows_equal_their_solo_results(served: Served) -> None:
    constrained = [dict(prompt="to", regex=SPEAKER, max_new_tokens=60, seed=7, temperature=0.9),
                   dict(prompt="be", choices=["yes", "no", "maybe not"], seed=8),
                   dict(prompt="or", regex="[a-z ]+[.!?]", max_new_tokens=40, seed=9, top_k=10)]
    free = [dict(prompt="not", max_new_tokens=40, seed=10), dict(prompt="x", max_new_tokens=30, temperature=0.0)]
    alone = [(await _generate(served, **r)).text for r in constrained + free]
    together = await asyncio.gather(*[_generate(served, **r) for r in constrained + free])
    assert [r.text for r in together] == alone


async def test_grpc_invalid_constraints_name_the_field_before_generating(served: Served) -> None:
    cases = [({"choices": ["né"]}, "choices: the model has never seen 'é'"),
             ({"regex": "(?:ab)*7"}, "regex: no text made of the model's characters satisfies it"),
             ({"regex": "a("}, "regex: cannot be compiled"),
             ({"json_schema": json.dumps(SCHEMA)}, "json_schema: needs a character the model has never seen ('{')"),
             ({"regex": "a", "choices": ["a"]}, "choices: give at most one of regex, choices, json_schema")]
    for fields, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _generate(served, **fields)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith(message), info.value.details()
    assert served.metric("chargpt_inference_generation_tokens_total", model="tiny") == 0


async def test_client_library_json_schema(make_server: ServerFactory) -> None:
    s: Served = await make_server()
    write_checkpoint(s.models_dir / "json", vocab=VOCAB + '{}[]"0123456789')
    await s.load("json", "json")
    async with AsyncInferenceClient(f"127.0.0.1:{s.port}") as client:
        for seed in range(3):
            result = await client.generate("json", json_schema=json.dumps(SCHEMA), seed=seed, max_new_tokens=300)
            assert result.summary.finish_reason == "STOP"
            jsonschema.validate(json.loads(result.text), SCHEMA)
        with pytest.raises(InvalidArgument, match="regex"):
            await client.generate("json", regex="é")


async def test_openai_sdk_structured_outputs_and_the_older_names(make_server: ServerFactory) -> None:
    s: Served = await make_server(http_port=0)
    write_checkpoint(s.models_dir / "json", vocab=VOCAB + '{}[]"0123456789')
    await s.load("tiny", "json")
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{s.server.http.port}/v1", api_key="x", max_retries=0)
    bodies: list[dict[str, Any]] = [{"structured_outputs": {"choice": ["yes", "no"]}}, {"guided_choice": ["yes", "no"]},
                                    {"choices": ["yes", "no"]}]
    for body in bodies:
        reply = await client.completions.create(model="tiny", prompt="ok?", max_tokens=10, extra_body=body)
        assert reply.choices[0].text in ("yes", "no") and reply.choices[0].finish_reason == "stop"
    for body in [{"structured_outputs": {"regex": SPEAKER}}, {"guided_regex": SPEAKER}]:
        reply = await client.completions.create(model="tiny", prompt="", max_tokens=100, extra_body=body, seed=2)
        assert re.fullmatch(SPEAKER, reply.choices[0].text)
    schema_bodies: list[dict[str, Any]] = [
        {"structured_outputs": {"json": SCHEMA}}, {"guided_json": SCHEMA}, {"json_schema": json.dumps(SCHEMA)},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}}]
    for body in schema_bodies:
        stream = await client.completions.create(model="tiny", prompt="", max_tokens=300, extra_body=body,
                                                 stream=True, seed=4)
        text = "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])
        jsonschema.validate(json.loads(text), SCHEMA)
    for body, param in [({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
                        ({"structured_outputs": {"grammar": "root ::= x"}}, None),
                        ({"choices": []}, "choices"), ({"guided_choice": []}, "guided_choice"),
                        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice")]:
        with pytest.raises(openai.BadRequestError) as info:
            await client.completions.create(model="tiny", prompt="", max_tokens=5, extra_body=body)
        if param is not None:
            assert info.value.body["param"] == param  # type: ignore[index]
