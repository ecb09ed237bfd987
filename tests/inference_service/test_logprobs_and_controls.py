"""Log-probabilities, penalties, min-p, logit bias and n samples, through a real server and the processor."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
import torch

from chargpt.sampling_params import SamplingParams
from chargpt.v1 import inference_pb2
from inference_service.logits_processors import PenaltyState, RowControls, apply_controls
from tests.inference_service.conftest import Served


def _request(**kwargs: object) -> inference_pb2.GenerateRequest:
    fields = {"model": "tiny", "prompt": "the cat ", "max_new_tokens": 24, "seed": 5, **kwargs}
    return inference_pb2.GenerateRequest(**fields)  # type: ignore[arg-type]


async def test_greedy_picks_are_the_top_alternative(served: Served) -> None:
    reply = await served.stub.Generate(_request(temperature=0.0, logprobs=5), timeout=30)
    assert len(reply.logprobs) == reply.summary.generated_tokens == 24
    assert "".join(e.token for e in reply.logprobs) == reply.text
    for entry in reply.logprobs:
        assert len(entry.top_logprobs) == 5
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)


async def test_logprobs_match_score_and_ignore_the_sampling_settings(served: Served) -> None:
    """Raw distribution: temperature/top-k/penalties change the picks, never the reported values."""
    reply = await served.stub.Generate(_request(temperature=1.7, top_k=7, repetition_penalty=1.3, logprobs=1,
                                                max_new_tokens=20), timeout=30)
    text = "the cat " + reply.text
    score = await served.stub.Score(inference_pb2.ScoreRequest(model="tiny", text=text,
                                                               include_token_logprobs=True), timeout=30)
    expected = list(score.token_logprobs)[-20:]
    got = [e.logprob for e in reply.logprobs]
    assert got == pytest.approx(expected, abs=2e-4)
    assert sum(got) == pytest.approx(sum(expected), abs=2e-3)


async def test_streamed_logprobs_cover_every_character(served: Served) -> None:
    texts, entries = [], []
    async for message in served.stub.GenerateStream(_request(logprobs=2, stop=["e"]), timeout=30):
        texts.append(message.text)
        entries.extend(message.logprobs)
    summary = message.summary
    assert len(entries) == summary.generated_tokens  # a matched stop sequence's characters included
    assert "".join(e.token for e in entries).startswith("".join(texts))


@pytest.mark.parametrize("controls", [
    {"repetition_penalty": 1.5}, {"frequency_penalty": 1.2, "presence_penalty": 0.7}, {"min_p": 0.2},
    {"logit_bias": {"e": 5.0, " ": -100.0}}, {"repetition_penalty": 0.8, "min_p": 0.05, "temperature": 0.0}])
async def test_batched_equals_alone_with_controls(served: Served, controls: dict[str, object]) -> None:
    request = _request(max_new_tokens=40, **controls)
    alone = await served.stub.Generate(request, timeout=30)
    others = [served.stub.Generate(_request(seed=s, max_new_tokens=60, temperature=0.9), timeout=30)
              for s in range(6)]
    together = await asyncio.gather(served.stub.Generate(request, timeout=30), *others)
    assert together[0].text == alone.text
    plain = await served.stub.Generate(_request(max_new_tokens=40, temperature=controls.get("temperature", 1.0)),
                                       timeout=30)
    assert plain.text != alone.text  # the control changed something


async def test_logit_bias_forces_and_bans_characters(served: Served) -> None:
    forced = await served.stub.Generate(_request(logit_bias={"z": 100.0}), timeout=30)
    assert forced.text == "z" * 24
    banned = await served.stub.Generate(_request(logit_bias={c: -100.0 for c in "etaoin "}), timeout=30)
    assert not set(banned.text) & set("etaoin ")


async def test_n_samples_are_independent_and_reproducible(served: Served) -> None:
    reply = await served.stub.Generate(_request(n=3, logprobs=1), timeout=30)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.text == reply.choices[0].text and reply.summary == reply.choices[0].summary
    single = await served.stub.Generate(_request(), timeout=30)
    assert reply.choices[0].text == single.text  # sample 0 uses the request's seed
    assert len({c.text for c in reply.choices}) == 3
    seeds = [c.summary.seed for c in reply.choices]
    assert seeds[0] == 5 and len(set(seeds)) == 3
    again = await served.stub.Generate(_request(seed=seeds[2]), timeout=30)
    assert again.text == reply.choices[2].text  # each sample reproducible alone from its echoed seed
    indexes, texts = set(), {0: "", 1: "", 2: ""}
    async for message in served.stub.GenerateStream(_request(n=3), timeout=30):
        texts[message.index] += message.text
        if message.HasField("summary"):
            indexes.add(message.summary.index)
    assert indexes == {0, 1, 2} and [texts[i] for i in range(3)] == [c.text for c in reply.choices]


@pytest.mark.parametrize(("fields", "name"), [
    ({"logprobs": 21}, "logprobs"), ({"logprobs": -1}, "logprobs"), ({"n": 17}, "n"), ({"n": -2}, "n"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"repetition_penalty": math.nan}, "repetition_penalty"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"), ({"presence_penalty": -3.0}, "presence_penalty"),
    ({"min_p": 1.5}, "min_p"), ({"logit_bias": {"ab": 1.0}}, "logit_bias"), ({"logit_bias": {"é": 1.0}}, "logit_bias"),
    ({"logit_bias": {"a": 101.0}}, "logit_bias")])
async def test_bounds_name_the_field(served: Served, fields: dict[str, object], name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await served.stub.Generate(_request(**fields), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(f"{name}:")


def test_processor_math() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    state = PenaltyState([0, 1], vocab_size=4)
    state.observe(2)
    state.observe(2)
    row = RowControls(SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25), state)
    out = apply_controls(logits, [row])
    # seen: 0, 1 (prompt), 2 (generated twice): 2/2, -1*2, 0.5/2 - 2*0.5 - 0.25; 3 untouched.
    assert out.tolist() == [[1.0, -2.0, 0.25 - 1.0 - 0.25, 0.0]]
    assert apply_controls(logits, [RowControls(SamplingParams(), None)]) is logits
    # min_p 0.3 at T=1: keep p >= 0.3 * p_max, i.e. logit >= 2 + ln 0.3 = 0.796.
    kept = apply_controls(logits, [RowControls(SamplingParams(min_p=0.3), None)])
    assert torch.isfinite(kept).tolist() == [[True, False, False, False]]
    # at T=2 the distribution is flatter: threshold 2 + 2 ln 0.3 = -0.408 keeps 0.5 and 0.0 too.
    kept = apply_controls(logits, [RowControls(SamplingParams(min_p=0.3, temperature=2.0), None)])
    assert torch.isfinite(kept).tolist() == [[True, False, True, True]]


def test_a_tiny_repetition_penalty_keeps_the_logits_finite() -> None:
    """1e-40 is a valid penalty (a float32 subnormal): a seen character's positive logit is pushed to float32's
    limit, not to +inf (which would read as a broken model); a negative one moves towards 0; masked stays masked."""
    logits = torch.tensor([[2.0, -1.0, 0.5, float("-inf")]])
    state = PenaltyState([0, 1, 3], vocab_size=4)
    out = apply_controls(logits, [RowControls(SamplingParams(repetition_penalty=1e-40), state)])
    assert out.tolist() == [[torch.finfo(torch.float32).max, torch.tensor(-1e-40).item(), 0.5, float("-inf")]]
