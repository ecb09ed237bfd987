"""Sampling: greedy, top-k, top-p, seeded determinism and the notebook presets."""

import pytest
import torch

from chargpt.core.sampling import (
    PRESETS,
    Preset,
    SamplingParams,
    filter_logits,
    make_generator,
    resolve_sampling,
    sample_next,
)
from chargpt.errors import InvalidArgumentError

LOGITS = torch.tensor([0.0, 3.0, 1.0, 2.0, -1.0])


def test_presets_match_the_notebook() -> None:
    assert PRESETS[Preset.FOCUSED] == SamplingParams(temperature=0.3, top_k=5)
    assert PRESETS[Preset.BALANCED] == SamplingParams(temperature=0.8, top_k=40)
    assert PRESETS[Preset.CREATIVE] == SamplingParams(temperature=1.2, top_k=200)


def test_explicit_fields_override_the_preset() -> None:
    params = resolve_sampling(Preset.BALANCED, top_k=3)
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
