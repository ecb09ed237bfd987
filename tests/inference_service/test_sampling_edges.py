"""Numbers at the edges over gRPC: tiny temperatures, explicit zeros, and a model whose logits break."""

from __future__ import annotations

import asyncio
import random
import struct
from pathlib import Path

import grpc
import pytest
import torch

from chargpt.core.checkpoint import load_checkpoint
from chargpt.core.model import GPT
from chargpt.core.sampling import generate
from chargpt.errors import NonFiniteLogitsError
from chargpt.sampling_params import SamplingParams
from chargpt.v1 import inference_pb2
from inference_service.engine import Engine
from inference_service.engine.request import Finish, GenRequest, Summary
from inference_service.metrics import InferenceMetrics

from .conftest import Served, write_checkpoint

G = inference_pb2.GenerateRequest
BROKEN = "Z"  # the character whose embedding is made NaN below


def _float32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def _greedy(served: Served, prompt: str, n: int) -> str:
    checkpoint = served.server.registry.models["tiny"].checkpoint
    ids = torch.tensor([checkpoint.tokenizer.encode(prompt)])
    out = generate(checkpoint.model, ids, n, SamplingParams(temperature=0.0))
    return str(checkpoint.tokenizer.decode(out[0, ids.shape[1]:].tolist()))


async def test_tiny_temperatures_give_the_greedy_text_and_are_echoed_exactly(served: Served) -> None:
    """1e-38 used to overflow max_logit / T to inf and return junk; it is greedy, and the echo is not 0."""
    greedy = _greedy(served, "the cat ", 20)
    for temperature in (0.0, 1e-45, 1e-40, 1e-38, 1e-30, 5e-6):
        reply = await served.stub.Generate(G(model="tiny", prompt="the cat ", temperature=temperature,
                                             max_new_tokens=20, seed=1), timeout=30)
        assert reply.text == greedy, temperature
        assert reply.summary.temperature == _float32(temperature)


async def test_explicit_zero_max_new_tokens_is_refused_and_unset_is_the_default(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.stub.Generate(G(model="tiny", prompt="a", max_new_tokens=0), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_new_tokens" in (err.value.details() or "")
    unset = await served.stub.Generate(G(model="tiny", prompt="a", temperature=0.0), timeout=60)
    assert len(unset.text) == unset.summary.generated_tokens == 256


async def test_explicit_zero_stride_is_refused_and_unset_is_block_size(served: Served) -> None:
    text = "the cat sat on the mat and then it sat on the hat. " * 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.stub.Score(inference_pb2.ScoreRequest(model="tiny", text=text, stride=0), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "stride" in (err.value.details() or "")
    unset = await served.stub.Score(inference_pb2.ScoreRequest(model="tiny", text=text), timeout=30)
    block = await served.stub.Score(inference_pb2.ScoreRequest(model="tiny", text=text, stride=32), timeout=30)
    assert unset.mean_nll == block.mean_nll


def _break_one_character(model: GPT, vocabulary: str) -> None:
    """Give BROKEN a NaN embedding: any sequence that reads it gets NaN logits, the others are untouched.
    The output head is untied first, or every sequence's logit for BROKEN would be NaN too."""
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.wte.weight.detach().clone())
        model.wte.weight[vocabulary.index(BROKEN)] = float("nan")


async def test_nan_logits_fail_that_request_clearly_and_the_batch_goes_on(served: Served) -> None:
    checkpoint = served.server.registry.models["tiny"].checkpoint
    healthy = _greedy(served, "the cat ", 20)
    assert BROKEN not in healthy
    _break_one_character(checkpoint.model, checkpoint.tokenizer.vocabulary)
    broken = served.stub.Generate(G(model="tiny", prompt=f"a {BROKEN}ebra", max_new_tokens=20, seed=1), timeout=30)
    fine = served.stub.Generate(G(model="tiny", prompt="the cat ", max_new_tokens=20, temperature=0.0), timeout=30)
    outcomes = await asyncio.gather(broken, fine, return_exceptions=True)
    assert isinstance(outcomes[0], grpc.aio.AioRpcError)
    assert outcomes[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "non-finite logits" in (outcomes[0].details() or "")
    assert isinstance(outcomes[1], inference_pb2.GenerateResponse) and outcomes[1].text == healthy
    again = await served.stub.Generate(G(model="tiny", prompt="the cat ", max_new_tokens=20, temperature=0.0),
                                       timeout=30)
    assert again.text == healthy


async def test_nan_logits_fail_score_clearly_and_other_texts_still_score(served: Served) -> None:
    checkpoint = served.server.registry.models["tiny"].checkpoint
    healthy = await served.stub.Score(inference_pb2.ScoreRequest(model="tiny", text="the cat sat"), timeout=30)
    _break_one_character(checkpoint.model, checkpoint.tokenizer.vocabulary)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await served.stub.Score(inference_pb2.ScoreRequest(model="tiny", text=f"a {BROKEN}ebra ran"), timeout=30)
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "non-finite logits" in (failure.value.details() or "")
    again = await served.stub.Score(inference_pb2.ScoreRequest(model="tiny", text="the cat sat"), timeout=30)
    assert again.mean_nll == pytest.approx(healthy.mean_nll, rel=1e-5)


async def test_a_failed_rows_nan_cache_never_reaches_the_next_sequence_in_that_row(tmp_path: Path) -> None:
    """Rows: A (NaN from its first character on), a long healthy C, a short healthy D, admitted together. A fails
    and D moves into A's row; decoding beside C then reads D's row past D's length, where A's NaN keys were."""
    path = write_checkpoint(tmp_path / "tiny")
    checkpoint = load_checkpoint(path, "cpu", torch.float32)
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    prompts = {"C": "the quick brown fox jumps over", "D": "ab"}
    expected = {}
    for name, prompt in prompts.items():
        ids = torch.tensor([tokenizer.encode(prompt)])
        expected[name] = tokenizer.decode(generate(model, ids, 2, SamplingParams(temperature=0.0))[0].tolist()[
            len(prompt):])
        assert BROKEN not in expected[name][:1]  # its second step would read the broken character
    _break_one_character(model, tokenizer.vocabulary)
    engine = Engine("t", model, tokenizer.vocabulary, max_batch=4, max_queue=8, metrics=InferenceMetrics())
    loop = asyncio.get_running_loop()

    def request(prompt: str) -> GenRequest:
        return GenRequest(prompt_ids=tokenizer.encode(prompt), prompt_chars_dropped=0,
                          params=SamplingParams(temperature=0.0, max_new_tokens=2), seed=random.getrandbits(32),
                          deadline=None, loop=loop)

    jobs = {"A": request(BROKEN + "ebras and more words here"), "C": request(prompts["C"]),
            "D": request(prompts["D"])}
    with engine._cond:  # all three join in one step, in this order (rows 0, 1, 2)
        for job in jobs.values():
            engine.submit(job)
    try:
        results = {name: await _collect(job) for name, job in jobs.items()}
    finally:
        await asyncio.to_thread(engine.close)
    text_a, summary_a = results["A"]
    assert summary_a.finish is Finish.ERROR and isinstance(summary_a.error, NonFiniteLogitsError)
    assert text_a == "" and "character 1 " in str(summary_a.error)
    for name in ("C", "D"):
        assert results[name][1].finish is Finish.LENGTH and results[name][0] == expected[name], name


async def _collect(job: GenRequest) -> tuple[str, Summary]:
    parts: list[str] = []
    while True:
        for chunk in await asyncio.wait_for(job.outbox.take(), 30):
            parts.append(chunk.text)
            if chunk.summary is not None:
                return "".join(parts), chunk.summary
