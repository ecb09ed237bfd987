"""The torch-free sampling rule (chargpt.sampling_reference, used by the client's next-character view) gives the
distribution the service's torch sampler draws from, with every field the sampler honours."""

from __future__ import annotations

import random

import pytest
import torch

from chargpt.sampling_params import SamplingParams
from chargpt.sampling_reference import sampling_distribution
from inference_service.logits_processors import PenaltyState, RowControls, apply_controls
from inference_service.sampler import BatchSampler, RowSampling

VOCAB = "abcdefghijkl"


def _params(rng: random.Random) -> SamplingParams:
    """Random settings; each field is at its default half of the time, so that combinations are covered."""
    def maybe(value: object) -> object:
        return value if rng.random() < 0.5 else None

    values = {"temperature": maybe(rng.choice([0.0, 1e-6, rng.uniform(0.05, 3.0)])), "top_k": maybe(rng.randint(0, 14)),
              "top_p": maybe(rng.uniform(0.05, 1.0)), "min_p": maybe(rng.uniform(0.0, 0.9)),
              "repetition_penalty": maybe(rng.uniform(0.5, 3.0)), "frequency_penalty": maybe(rng.uniform(-2, 2)),
              "presence_penalty": maybe(rng.uniform(-2, 2)),
              "logit_bias": maybe({rng.choice(VOCAB): rng.uniform(-5, 5) for _ in range(rng.randint(1, 3))})}
    return SamplingParams(**{k: v for k, v in values.items() if v is not None})


def _torch_sampler(logits: list[float], params: SamplingParams, prompt: str, generated: str) -> list[float]:
    """What the engine does to a row: logits processors, then BatchSampler's distribution."""
    state = PenaltyState([VOCAB.index(c) for c in prompt], len(VOCAB))
    for char in generated:
        state.observe(VOCAB.index(char))
    bias = tuple((VOCAB.index(c), v) for c, v in sorted(params.logit_bias.items()))
    processed = apply_controls(torch.tensor([logits]), [RowControls(params, state, bias)])
    sampler = BatchSampler()
    sampler.set_rows([RowSampling(params, random.Random(0))])
    return sampler.probabilities(processed)[0].tolist()


@pytest.mark.parametrize("seed", range(40))
def test_the_reference_equals_the_torch_sampler(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        logits = [round(rng.gauss(0, 2), 1) for _ in VOCAB]  # rounded: ties happen
        params = _params(rng)
        prompt = "".join(rng.choices(VOCAB, k=rng.randint(1, 5)))
        generated = "".join(rng.choices(VOCAB, k=rng.randint(0, 6)))
        expected = _torch_sampler(logits, params, prompt, generated)
        got = sampling_distribution(list(zip(VOCAB, logits, strict=True)), params, prompt, generated)
        assert [c for c, _ in got] == list(VOCAB)
        assert [p for _, p in got] == pytest.approx(expected, abs=1e-5), (logits, params, prompt, generated)


def test_every_field_the_sampler_honours_changes_the_reference() -> None:
    logits = [("a", 2.0), ("b", 1.0), ("c", 0.5), ("d", -1.0)]
    plain = sampling_distribution(logits, SamplingParams(), "a", "bb")
    for changed in ({"temperature": 0.5}, {"top_k": 2}, {"top_p": 0.5}, {"min_p": 0.5},
                    {"repetition_penalty": 2.0}, {"frequency_penalty": 1.0}, {"presence_penalty": 1.0},
                    {"logit_bias": {"d": 3.0}}):
        assert sampling_distribution(logits, SamplingParams(**changed), "a", "bb") != plain, changed
