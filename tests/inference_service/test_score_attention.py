"""Score against a direct computation (short and sliding-window texts) and GetAttention's tensor."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from chargpt.core.checkpoint import load_checkpoint
from chargpt.v1 import common_pb2, inference_pb2
from inference_service.scoring import ScoreJob, attention, score_many, score_windows

from .conftest import Served

TEXT = "to be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"


def _direct_logprobs(served: Served, text: str, context: int) -> list[float]:
    """Each character's log-probability given up to `context` preceding characters, one forward pass each."""
    checkpoint = load_checkpoint(served.models_dir / "tiny")
    ids = checkpoint.tokenizer.encode(text)
    out = []
    with torch.no_grad():
        for j in range(1, len(ids)):
            window = torch.tensor([ids[max(0, j - context): j]])
            logits, _ = checkpoint.model(window)
            out.append(float(F.log_softmax(logits[0, -1], dim=-1)[ids[j]]))
    return out


async def test_short_text_matches_direct_computation(served: Served) -> None:
    text = TEXT[:30]
    reply = await served.stub.Score(inference_pb2.ScoreRequest(model="tiny", text=text,
                                                               include_token_logprobs=True), timeout=30)
    direct = _direct_logprobs(served, text, context=32)
    assert reply.num_tokens == 29 and len(reply.token_logprobs) == 29
    assert np.allclose(reply.token_logprobs, direct, atol=1e-4)
    assert math.isclose(reply.mean_nll, -sum(direct) / 29, rel_tol=1e-5)
    assert math.isclose(reply.bits_per_char, reply.mean_nll / math.log(2), rel_tol=1e-9)
    assert math.isclose(reply.perplexity, math.exp(reply.mean_nll), rel_tol=1e-9)
    assert served.metric("chargpt_inference_score_requests_total", model="tiny") == 1


async def test_sliding_window_matches_strided_definition(served: Served) -> None:
    """stride 32 = block_size: windows do not overlap; stride 8: each character sees >= 24 of context."""
    for stride in (32, 8):
        reply = await served.stub.Score(inference_pb2.ScoreRequest(model="tiny", text=TEXT, stride=stride,
                                                                   include_token_logprobs=True), timeout=30)
        checkpoint = load_checkpoint(served.models_dir / "tiny")
        ids = checkpoint.tokenizer.encode(TEXT)
        expected = []
        with torch.no_grad():
            for begin, end, scored_from in score_windows(len(ids), 32, stride):
                logits, _ = checkpoint.model(torch.tensor([ids[begin:end]]))
                logp = F.log_softmax(logits[0], dim=-1)
                expected += [float(logp[j - begin, ids[j + 1]]) for j in range(scored_from, end)]
        assert len(expected) == len(TEXT) - 1
        assert np.allclose(reply.token_logprobs, expected, atol=1e-4)
        if stride == 32:  # the default: back-to-back windows, the trainer's validation-loss definition
            default = await served.stub.Score(inference_pb2.ScoreRequest(model="tiny", text=TEXT,
                                                                         include_token_logprobs=True), timeout=30)
            assert list(default.token_logprobs) == list(reply.token_logprobs)
            assert default.mean_nll == reply.mean_nll
    # The maximum context rule: with stride 1 every character gets min(j, 32) characters of context.
    reply = await served.stub.Score(inference_pb2.ScoreRequest(model="tiny", text=TEXT, stride=1,
                                                               include_token_logprobs=True), timeout=30)
    assert np.allclose(reply.token_logprobs, _direct_logprobs(served, TEXT, context=32), atol=1e-4)


def test_windows_per_pass_do_not_change_the_result(served: Served) -> None:
    checkpoint = load_checkpoint(served.models_dir / "tiny")
    ids = checkpoint.tokenizer.encode(TEXT * 3)
    for stride in (32, 5):
        one, *others = (score_many(checkpoint.model, [ScoreJob(ids, stride, want_logprobs=True)], windows * 32)[0]
                        for windows in (1, 3, 64))
        for other in others:
            assert np.allclose(other.token_logprobs, one.token_logprobs, atol=1e-5)
            assert other.mean_nll == pytest.approx(one.mean_nll, rel=1e-6)


def test_windows_score_every_character_once() -> None:
    for n, block, stride in [(2, 4, 2), (5, 4, 2), (100, 16, 8), (100, 16, 16), (33, 32, 3), (257, 256, 128)]:
        scored = [j for _, end, first in score_windows(n, block, stride) for j in range(first, end)]
        assert scored == list(range(n - 1))
        assert all(end - begin <= block for begin, end, _ in score_windows(n, block, stride))


async def test_attention_rows_are_causal_distributions(served: Served) -> None:
    reply = await served.stub.GetAttention(inference_pb2.GetAttentionRequest(model="tiny", text="hello world"),
                                           timeout=30)
    assert list(reply.weights.shape) == [2, 4, 11, 11] and reply.weights.dtype == common_pb2.TENSOR_DTYPE_FLOAT16
    w = np.frombuffer(reply.weights.data, dtype="<f2").reshape(2, 4, 11, 11).astype(np.float32)
    assert np.allclose(w.sum(-1), 1.0, atol=1e-2)
    assert np.all(np.triu(w, k=1) == 0)
    assert list(reply.tokens) == list("hello world") and list(reply.layers) == [0, 1]
    picked = await served.stub.GetAttention(inference_pb2.GetAttentionRequest(
        model="tiny", text="hello world", layers=[1], heads=[3, 0], dtype=common_pb2.TENSOR_DTYPE_FLOAT32),
        timeout=30)
    p = np.frombuffer(picked.weights.data, dtype="<f4").reshape(1, 2, 11, 11)
    assert list(picked.heads) == [3, 0]
    assert np.allclose(p[0, 0], w[1, 3], atol=2e-3) and np.allclose(p[0, 1], w[1, 0], atol=2e-3)
    assert np.allclose(p.sum(-1), 1.0, atol=1e-5)


async def test_attention_size_cap(make_server: object) -> None:
    from .conftest import write_checkpoint

    s: Served = await make_server(max_attention_bytes=4096)  # type: ignore[operator]
    write_checkpoint(s.models_dir / "tiny")
    await s.load("tiny", "tiny")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.stub.GetAttention(inference_pb2.GetAttentionRequest(model="tiny", text="a" * 32), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "16384 bytes" in (err.value.details() or "")
    ok = await s.stub.GetAttention(inference_pb2.GetAttentionRequest(model="tiny", text="a" * 32, layers=[0],
                                                                     heads=[0]), timeout=30)
    assert list(ok.weights.shape) == [1, 1, 32, 32]


async def test_float32_attention_of_a_bfloat16_model_is_computed_in_float32(served: Served) -> None:
    """Issue 23: a FLOAT32 dump of a model served with bf16 weights had rows summing to 1 +- 2e-3 (the softmax
    was rounded to bf16); it is computed from the weights widened to float32, through the real client."""
    from chargpt_client import AsyncInferenceClient

    text = "to be, or not to be, that is the q"[:32]
    async with AsyncInferenceClient(f"127.0.0.1:{served.port}") as client:
        loaded = await client.load_model("narrow", checkpoint_path="tiny", dtype="bfloat16")
        assert loaded.model.dtype == "bfloat16"
        dump = await client.attention("narrow", text, dtype="float32")
    T = len(text)
    rows = np.array(dump.values(), dtype=np.float64).reshape(2, 4, T, T).sum(-1)
    assert dump.dtype == "float32" and np.abs(rows - 1.0).max() <= 1e-6
    checkpoint = load_checkpoint(served.models_dir / "tiny", dtype=torch.bfloat16)
    expected = attention(checkpoint.model.float(), checkpoint.tokenizer.encode(text), [0, 1], [0, 1, 2, 3])
    assert np.allclose(np.array(dump.values()).reshape(2, 4, T, T), expected.numpy(), atol=1e-6)

