"""Every kind of bad request gets its status code and names its field; none is INTERNAL; the server stays up."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from chargpt.v1 import inference_pb2

from .conftest import Served

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
G = inference_pb2.GenerateRequest

GENERATE_CASES: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
    ({"model": ""}, INVALID, "model"),
    ({"model": "nope"}, NOT_FOUND, "nope"),
    ({"max_new_tokens": -1}, INVALID, "max_new_tokens"),
    ({"max_new_tokens": 0}, INVALID, "max_new_tokens"),  # explicit 0 is not "unset" (optional field)
    ({"max_new_tokens": 2**31 - 1}, INVALID, "max_new_tokens"),
    ({"temperature": float("nan")}, INVALID, "temperature"),
    ({"temperature": float("inf")}, INVALID, "temperature"),
    ({"temperature": -0.5}, INVALID, "temperature"),
    ({"temperature": 1e30}, INVALID, "temperature"),
    ({"top_k": -3}, INVALID, "top_k"),
    ({"top_p": 0.0}, INVALID, "top_p"),
    ({"top_p": 1.5}, INVALID, "top_p"),
    ({"top_p": float("nan")}, INVALID, "top_p"),
    ({"stop": [""]}, INVALID, "stop"),
    ({"stop": ["x" * 65]}, INVALID, "stop"),
    ({"stop": ["a"] * 17}, INVALID, "stop"),
    ({"preset": 99}, INVALID, "preset"),
    ({"prompt": "hello €∆"}, INVALID, "prompt"),
]


@pytest.mark.parametrize(("fields", "code", "named"), GENERATE_CASES)
async def test_bad_generate_requests(served: Served, fields: dict[str, Any], code: grpc.StatusCode,
                                     named: str) -> None:
    request = G(**{"model": "tiny", "prompt": "a", "max_new_tokens": 2, **fields})
    for call in (served.stub.Generate(request, timeout=10), _drain(served.stub.GenerateStream(request, timeout=10))):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code and named in (err.value.details() or "")
    assert len((await served.stub.Generate(G(model="tiny", prompt="a", max_new_tokens=2), timeout=10)).text) == 2


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


async def test_huge_values_that_are_valid_are_accepted(served: Served) -> None:
    reply = await served.stub.Generate(G(model="tiny", prompt="a", max_new_tokens=3, top_k=2**31 - 1,
                                         seed=2**64 - 1, temperature=100.0), timeout=10)
    assert len(reply.text) == 3 and reply.summary.seed == 2**64 - 1


SCORE_CASES: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
    ({"text": "a"}, INVALID, "text"),
    ({"text": ""}, INVALID, "text"),
    ({"text": "ab€"}, INVALID, "text"),
    ({"stride": -1}, INVALID, "stride"),
    ({"stride": 0}, INVALID, "stride"),
    ({"stride": 33}, INVALID, "stride"),
    ({"model": "nope"}, NOT_FOUND, "nope"),
    ({"text": "a" * 2001}, grpc.StatusCode.RESOURCE_EXHAUSTED, "2000"),
]


@pytest.mark.parametrize(("fields", "code", "named"), SCORE_CASES)
async def test_bad_score_requests(make_server: Any, fields: dict[str, Any], code: grpc.StatusCode,
                                  named: str) -> None:
    from .conftest import write_checkpoint

    s: Served = await make_server(max_score_chars=2000)
    write_checkpoint(s.models_dir / "tiny")
    await s.load("tiny", "tiny")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.stub.Score(inference_pb2.ScoreRequest(**{"model": "tiny", "text": "abc", **fields}), timeout=10)
    assert err.value.code() == code and named in (err.value.details() or "")


ATTENTION_CASES: list[tuple[dict[str, Any], str]] = [
    ({"text": ""}, "text"),
    ({"text": "a" * 33}, "text"),
    ({"text": "a€"}, "text"),
    ({"layers": [2]}, "layers"),
    ({"layers": [-1]}, "layers"),
    ({"heads": [4]}, "heads"),
    ({"dtype": 7}, "dtype"),
]


@pytest.mark.parametrize(("fields", "named"), ATTENTION_CASES)
async def test_bad_attention_requests(served: Served, fields: dict[str, Any], named: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.stub.GetAttention(inference_pb2.GetAttentionRequest(**{"model": "tiny", "text": "ab",
                                                                             **fields}), timeout=10)
    assert err.value.code() == INVALID and named in (err.value.details() or "")


async def test_bad_model_requests(served: Served) -> None:
    cases = [
        (served.stub.LoadModel(inference_pb2.LoadModelRequest(name="x"), timeout=10), INVALID, "source"),
        (served.stub.LoadModel(inference_pb2.LoadModelRequest(name="", checkpoint_path="tiny"), timeout=10),
         INVALID, "name"),
        (served.stub.LoadModel(inference_pb2.LoadModelRequest(name="x" * 65, checkpoint_path="tiny"), timeout=10),
         INVALID, "name"),
        (served.stub.LoadModel(inference_pb2.LoadModelRequest(name="x", checkpoint_path=""), timeout=10),
         INVALID, "checkpoint_path"),
        (served.stub.GetModel(inference_pb2.GetModelRequest(name=""), timeout=10), INVALID, "name"),
        (served.stub.GetModel(inference_pb2.GetModelRequest(name="nope"), timeout=10), NOT_FOUND, "nope"),
        (served.stub.UnloadModel(inference_pb2.UnloadModelRequest(name=""), timeout=10), INVALID, "name"),
    ]
    for call, code, named in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code and named in (err.value.details() or ""), named


async def test_unknown_characters_in_the_cropped_part_of_a_prompt_are_named(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.stub.Generate(G(model="tiny", prompt="€" + "a" * 40, max_new_tokens=2), timeout=10)
    assert err.value.code() == INVALID and "prompt" in (err.value.details() or "") and "€" in (
        err.value.details() or "")
