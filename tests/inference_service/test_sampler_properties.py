"""The batched sampler against a float64 reference and against chargpt.core.sampling.filter_logits (hypothesis).

Rows mix every setting at once (greedy, tiny and huge temperatures, top-k 1 and >= vocab, top-p near 0 and exactly
1), logits mix wide ranges, exact ties, masked (-inf) characters and broken values (NaN, +inf), in float32,
bfloat16 and float16. The reference is written for clarity, one row at a time in float64.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from chargpt.core.sampling import filter_logits
from chargpt.sampling_params import GREEDY_BELOW, SamplingParams
from inference_service.sampler import BatchSampler, RowSampling

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Beyond the API's cap of 100 too (built without validation): the arithmetic must not care.
TEMPERATURES = st.one_of(st.just(0.0), st.sampled_from([1e-45, 1e-40, 1e-38, 1e-30, GREEDY_BELOW / 2]),
                         st.sampled_from([GREEDY_BELOW, 1e-3, 100.0, 1e30, 3e38]), st.floats(GREEDY_BELOW, 100.0))
TOP_K = st.one_of(st.just(0), st.integers(1, 4), st.integers(1, 40))
TOP_P = st.one_of(st.just(1.0), st.sampled_from([1e-30, 1e-7, 0.5, 0.999999]), st.floats(1e-6, 1.0))
FLOAT32_MAX = 3.4028234663852886e38
LOGIT = st.one_of(st.floats(-30, 30, width=32), st.floats(width=32, allow_nan=False, allow_infinity=False),
                  st.sampled_from([0.0, 1.0, 2.5, -math.inf, 1e30, FLOAT32_MAX, -FLOAT32_MAX, 1e-30]),
                  st.sampled_from([-math.inf, math.nan, math.inf]))
MARGIN = 1e-4  # a top-p or inverse-CDF boundary this close to a float64 value may fall either way in float32


@dataclass
class Reference:
    """One row's float64 answer: its distribution, or broken; how close top-p came to a boundary."""

    probs: list[float] | None
    order: list[int]
    top_p_margin: float = math.inf


def reference(logits: list[float], p: SamplingParams) -> Reference:
    """The sampling distribution by definition, in float64, one character at a time."""
    V = len(logits)
    order = sorted(range(V), key=lambda i: (-logits[i], i))  # ranking; equal logits by index
    if any(math.isnan(x) for x in logits) or max(logits) in (math.inf, -math.inf):
        return Reference(None, order)
    if p.temperature < GREEDY_BELOW:
        return Reference([1.0 if i == order[0] else 0.0 for i in range(V)], order)
    kth = logits[order[p.top_k - 1]] if 0 < p.top_k < V else -math.inf
    top = max(logits)
    weights = [math.exp((x - top) / p.temperature) if x >= kth and x > -math.inf else 0.0 for x in logits]
    total = sum(weights)
    probs = [w / total for w in weights]
    margin, before = math.inf, 0.0
    if p.top_p < 1.0:
        for i in order:
            margin = min(margin, abs(before - p.top_p)) if probs[i] > 0 else margin
            if before >= p.top_p:
                probs[i] = 0.0
            before += weights[i] / total
        kept = sum(probs)
        probs = [q / kept for q in probs]
    return Reference(probs, order, margin)


def pick(ref: Reference, u: float) -> tuple[int, float]:
    """The reference's inverse-CDF choice for uniform u, and how far u lay from a CDF boundary."""
    assert ref.probs is not None
    cdf, margin = 0.0, math.inf
    for i in ref.order:
        if ref.probs[i] == 0.0:
            continue
        cdf += ref.probs[i]
        margin = min(margin, abs(cdf - u))
        if cdf > u:
            return i, margin
    return max((i for i in ref.order if ref.probs[i] > 0), key=ref.order.index), margin


@st.composite
def batches(draw: st.DrawFn) -> tuple[torch.Tensor, list[SamplingParams], list[int]]:
    vocab = draw(st.integers(1, 24))
    rows = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    logits = torch.tensor([draw(st.lists(LOGIT, min_size=vocab, max_size=vocab)) for _ in range(rows)]).to(dtype)
    params = [SamplingParams.model_construct(temperature=draw(TEMPERATURES), top_k=draw(TOP_K), top_p=draw(TOP_P))
              for _ in range(rows)]
    seeds = [draw(st.integers(0, 2**32)) for _ in range(rows)]
    return logits, params, seeds


def _references(logits: torch.Tensor, params: list[SamplingParams]) -> list[Reference]:
    """Each row's reference, from the logits as the sampler sees them (after any bf16/fp16 rounding)."""
    refs = [reference(row, p) for row, p in zip(logits.double().tolist(), params, strict=True)]
    assume(all(r.top_p_margin > MARGIN for r in refs))
    return refs


def _sampler(params: list[SamplingParams], seeds: list[int]) -> BatchSampler:
    sampler = BatchSampler()
    sampler.set_rows([RowSampling(p, random.Random(s)) for p, s in zip(params, seeds, strict=True)])
    return sampler


@settings(max_examples=250, deadline=None)
@given(batches())
def test_batched_distribution_is_the_float64_reference_and_filter_logits(
        batch: tuple[torch.Tensor, list[SamplingParams], list[int]]) -> None:
    logits, params, seeds = batch
    refs = _references(logits, params)
    probs = _sampler(params, seeds).probabilities(logits)
    for row, (ref, p) in enumerate(zip(refs, params, strict=True)):
        if ref.probs is None:
            assert torch.isnan(probs[row]).all()
            continue
        assert torch.allclose(probs[row].double(), torch.tensor(ref.probs, dtype=torch.float64), atol=2e-5, rtol=0)
        assert probs[row][torch.tensor(ref.probs) == 0].eq(0).all()  # nothing outside the allowed set, ever
        single = torch.softmax(filter_logits(logits[row], p), -1)
        assert torch.allclose(probs[row], single, atol=1e-6, rtol=0)


@settings(max_examples=250, deadline=None)
@given(batches())
def test_batched_choice_is_the_float64_reference_choice(
        batch: tuple[torch.Tensor, list[SamplingParams], list[int]]) -> None:
    logits, params, seeds = batch
    refs = _references(logits, params)
    draws = [random.Random(s).random() for s in seeds]  # each row's first number, as the sampler draws it
    expected: list[int | None] = []
    for ref, p, u in zip(refs, params, draws, strict=True):
        if ref.probs is None:
            expected.append(None)
        elif p.temperature < GREEDY_BELOW:
            expected.append(ref.order[0])  # the first argmax, exactly: temperature 0's tie-break
        else:
            choice, margin = pick(ref, u)
            assume(margin > MARGIN)
            expected.append(choice)
    assert _sampler(params, seeds).sample(logits) == expected


def test_top_p_of_exactly_one_never_drops_the_tail() -> None:
    """A float32 cumulative sum reaches 1.0 before the last character here; top_p = 1 must still keep it."""
    logits = torch.tensor([[0.0] * 1000 + [-12.0]])
    mixed = [SamplingParams(top_p=1.0), SamplingParams(top_p=0.5)]  # the second row turns top-p filtering on
    probs = _sampler(mixed, [0, 1]).probabilities(torch.cat([logits, logits]))
    assert probs[0, -1] > 0
    assert float(torch.softmax(logits[0], -1).cumsum(-1)[-2]) >= 1.0  # the trap is real


def test_a_draw_at_the_top_of_the_cdf_never_lands_on_a_dropped_character() -> None:
    """u * total can round up to total; the pick must stay on the last allowed character, not behind it."""

    class Top(random.Random):
        def random(self) -> float:
            return 1.0 - 2**-53

    logits = torch.tensor([[3.0, 2.0, 1.0, -math.inf, 0.5]])
    for p in (SamplingParams(), SamplingParams(top_k=2), SamplingParams(top_p=0.7)):
        sampler = BatchSampler()
        sampler.set_rows([RowSampling(p, Top())])
        probs = sampler.probabilities(logits)[0]
        (choice,) = sampler.sample(logits)
        assert choice is not None and probs[choice] > 0


def test_a_broken_row_fails_alone() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [0.0, math.nan, 1.0], [math.inf, 0.0, 0.0], [-math.inf] * 3])
    params = [SamplingParams(temperature=0.0)] * 4
    assert _sampler(params, [0] * 4).sample(logits) == [2, None, None, None]
    params = [SamplingParams()] * 4
    assert _sampler(params, [0] * 4).sample(logits)[1:] == [None, None, None]
