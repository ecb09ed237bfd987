"""On a CUDA device: a model loads there and batched generation agrees with single requests (skipped on CPU)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chargpt.v1 import inference_pb2

from .conftest import Served, write_checkpoint


@pytest.mark.gpu
async def test_cuda_generation_score_and_attention(make_server: Any) -> None:
    s: Served = await make_server(device="cuda")
    write_checkpoint(s.models_dir / "tiny")
    reply = await s.load("tiny", "tiny", device="cuda", dtype="float32")
    assert reply.model.device.startswith("cuda")
    prompts = ["a", "hello there", "xyz" * 15]

    def request(prompt: str) -> inference_pb2.GenerateRequest:
        return inference_pb2.GenerateRequest(model="tiny", prompt=prompt, max_new_tokens=40, temperature=0.0)

    alone = [await s.stub.Generate(request(p), timeout=60) for p in prompts]
    together = await asyncio.gather(*[s.stub.Generate(request(p), timeout=60) for p in prompts])
    assert [r.text for r in together] == [r.text for r in alone]
    score = await s.stub.Score(inference_pb2.ScoreRequest(model="tiny", text="hello world " * 10), timeout=60)
    assert score.num_tokens == 119 and score.mean_nll > 0
    attention = await s.stub.GetAttention(inference_pb2.GetAttentionRequest(model="tiny", text="hello"), timeout=60)
    assert list(attention.weights.shape) == [2, 4, 5, 5]
