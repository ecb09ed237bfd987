"""Sampling: greedy, top-k, top-p, seeded determinism, the notebook presets, and numbers at the edges."""

import math

import pytest
import torch

from chargpt.core.sampling import filter_logits, make_generator, sample_next
from chargpt.errors import InvalidArgumentError, NonFiniteLogitsError
from chargpt.sampling_params import (
    GREEDY_BELOW,
    SAMPLING_PRESETS,
    SamplingParams,
    SamplingPreset,
    resolve_sampling,
)

LOGITS = torch.tensor([0.0, 3.0, 1.0, 2.0, -1.0])


def test_presets_match_the_notebook() -> None:
    assert SAMPLING_PRESETS[SamplingPreset.FOCUSED] == SamplingParams(temperature=0.3, top_k=5)
    assert SAMPLING_PRESETS[SamplingPreset.BALANCED] == SamplingParams(temperature=0.8, top_k=40)
    assert SAMPLING_PRESETS[SamplingPreset.CREATIVE] == SamplingParams(temperature=1.2, top_k=200)


def test_explicit_fields_override_the_preset() -> None:
    params = resolve_sampling(SamplingPreset.BALANCED, top_k=3)
    assert params == SamplingParams(temperature=0.8, top_k=3)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": float("inf")}, "top_p"),
    ({"top_k": -2}, "top_k"),
])
def test_bad_values_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        resolve_sampling(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_greedy_picks_the_argmax() -> None:
    assert sample_next(LOGITS, SamplingParams(temperature=0.0), None) == 1


def test_top_k_keeps_only_k() -> None:
    kept = torch.isfinite(filter_logits(LOGITS, SamplingParams(top_k=2)))
    assert kept.tolist() == [False, True, False, True, False]


def test_top_p_keeps_the_nucleus() -> None:
    probs = LOGITS.softmax(-1)  # sorted: 0.64 (idx 1), 0.24 (idx 3), 0.09 (idx 2), ...
    assert probs[1] > 0.6
    kept = torch.isfinite(filter_logits(LOGITS, SamplingParams(top_p=0.5)))
    assert kept.tolist() == [False, True, False, False, False]
    kept = torch.isfinite(filter_logits(LOGITS, SamplingParams(top_p=0.8)))
    assert kept.tolist() == [False, True, False, True, False]


def test_same_seed_same_samples() -> None:
    params = SamplingParams(temperature=1.5)
    a = [sample_next(LOGITS, params, g) for g in [make_generator(7)] for _ in range(50)]
    g2 = make_generator(7)
    b = [sample_next(LOGITS, params, g2) for _ in range(50)]
    assert a == b and len(set(a)) > 1


def test_sampling_follows_the_distribution() -> None:
    gen = make_generator(0)
    draws = [sample_next(LOGITS, SamplingParams(), gen) for _ in range(4000)]
    freq = torch.bincount(torch.tensor(draws), minlength=5).float() / 4000
    assert (freq - LOGITS.softmax(-1)).abs().max() < 0.03


TIES = torch.tensor([1.0, 4.0, -2.0, 4.0, 0.5])  # the maximum twice: greedy takes index 1, the first


@pytest.mark.parametrize("temperature", [0.0, 1e-45, 1e-40, 1e-38, 1e-30, GREEDY_BELOW / 2])
def test_tiny_temperatures_are_greedy_with_the_same_tie_break(temperature: float) -> None:
    """max_logit / 1e-38 overflows float32; the answer must still be temperature 0's, first argmax on ties."""
    params = SamplingParams(temperature=temperature)
    assert params.greedy
    gen = make_generator(1)
    assert {sample_next(TIES, params, gen) for _ in range(50)} == {1}
    weights = filter_logits(TIES, params)
    assert weights.tolist() == [-math.inf, 0.0, -math.inf, -math.inf, -math.inf]
    assert torch.softmax(weights, -1).tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]


def test_just_above_the_greedy_threshold_is_a_finite_distribution() -> None:
    """Subtracting the maximum first: no inf, no NaN, and tied maxima share the mass."""
    probs = torch.softmax(filter_logits(TIES * 1e6, SamplingParams(temperature=GREEDY_BELOW)), -1)
    assert torch.isfinite(probs).all() and probs.tolist() == [0.0, 0.5, 0.0, 0.5, 0.0]


def test_huge_temperature_is_uniform_over_the_allowed_set() -> None:
    """100 is the API's cap; past it (built without validation) the arithmetic still holds."""
    for temperature in (100.0, 1e30, 3e38):
        params = SamplingParams.model_construct(temperature=temperature, top_k=3, top_p=1.0)
        probs = torch.softmax(filter_logits(torch.tensor([0.0, 3.0, 1.0, 2.0, -1.0]) / 100, params), -1)
        assert probs[[0, 4]].tolist() == [0.0, 0.0]
        assert torch.allclose(probs[[1, 2, 3]], torch.full((3,), 1 / 3), atol=1e-3)


def test_top_k_edges() -> None:
    """top-k 1 keeps the maximum (both, when tied); k >= vocab keeps everything."""
    assert torch.isfinite(filter_logits(TIES, SamplingParams(top_k=1))).tolist() == [False, True, False, True, False]
    for k in (5, 6, 10**9):
        assert torch.isfinite(filter_logits(TIES, SamplingParams(top_k=k))).all()


def test_top_p_edges() -> None:
    """top-p near 0 keeps only the first of the ranking (ties by index); exactly 1 keeps everything."""
    kept = torch.isfinite(filter_logits(TIES, SamplingParams(top_p=1e-30)))
    assert kept.tolist() == [False, True, False, False, False]
    assert torch.isfinite(filter_logits(torch.tensor([0.0, -200.0, -300.0]), SamplingParams(top_p=1.0))).all()


def test_all_but_one_masked_always_picks_the_one() -> None:
    logits = torch.tensor([-math.inf, -math.inf, 2.0, -math.inf])
    gen = make_generator(3)
    for params in (SamplingParams(), SamplingParams(temperature=100.0), SamplingParams(top_p=0.01),
                   SamplingParams(temperature=0.0), SamplingParams(temperature=1e-38, top_k=1)):
        assert {sample_next(logits, params, gen) for _ in range(20)} == {2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits(dtype: torch.dtype) -> None:
    """A bf16/fp16 model's logits are upcast before scaling; their many exact ties break like float32's."""
    logits = torch.tensor([1.0, 4.0, 4.001, -2.0], dtype=dtype)  # 4 and 4.001 are one value in both dtypes
    assert sample_next(logits, SamplingParams(temperature=1e-38), None) == 1
    probs = torch.softmax(filter_logits(logits, SamplingParams(temperature=0.5)), -1)
    assert probs.dtype == torch.float32 and torch.isfinite(probs).all() and probs[1] == probs[2]


@pytest.mark.parametrize("bad", [
    [0.0, math.nan, 1.0], [0.0, math.inf, 1.0], [-math.inf, -math.inf, -math.inf], [math.nan] * 3,
])
def test_non_finite_logits_are_an_error_not_a_character(bad: list[float]) -> None:
    for params in (SamplingParams(), SamplingParams(temperature=0.0)):
        with pytest.raises(NonFiniteLogitsError, match="non-finite logits"):
            sample_next(torch.tensor(bad), params, make_generator(0))
