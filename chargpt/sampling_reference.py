"""The sampling rule in plain Python (no torch): the distribution the service's sampler draws a character from."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from chargpt.sampling_params import SamplingParams

Candidates = list[tuple[str, float]]  # (character, probability)


def sampling_distribution(logits: Sequence[tuple[str, float]], params: SamplingParams, prompt: str = "",
                          generated: str = "") -> Candidates:
    """(character, logit) -> (character, probability the sampler draws it with), in the order given.

    The service's order (inference_service/logits_processors.py, then sampler.py): repetition penalty on the
    characters of prompt + generated, frequency and presence penalties on generated ones, logit bias, min-p at the
    temperature, then greedy (the first largest) or temperature, top-k (ties kept) and top-p over the ranking of
    those logits. tests/inference_service/test_sampling_reference.py holds it equal to the torch sampler.
    """
    if not logits:
        return []
    counts, seen = Counter(generated), set(prompt + generated)
    values = []
    for char, logit in logits:
        if char in seen:
            p = params.repetition_penalty
            logit = logit / p if logit > 0 else logit * p
        logit -= params.frequency_penalty * counts[char] + params.presence_penalty * (counts[char] > 0)
        values.append(logit + params.logit_bias.get(char, 0.0))
    peak = max(values)
    if params.min_p > 0.0 and params.temperature > 0.0:
        floor = peak + params.temperature * math.log(params.min_p)
        values = [v if v >= floor else -math.inf for v in values]
    if params.greedy:
        first = values.index(peak)
        return [(char, 1.0 if i == first else 0.0) for i, (char, _) in enumerate(logits)]
    return list(zip([c for c, _ in logits], _filtered(values, params), strict=True))


def _filtered(values: list[float], params: SamplingParams) -> list[float]:
    """Probabilities after temperature, top-k (ties with the k-th kept) and top-p, in the order of `values`."""
    order = sorted(range(len(values)), key=lambda i: -values[i])  # stable: equal values by index
    weights = [math.exp((v - values[order[0]]) / params.temperature) for v in values]
    if 0 < params.top_k < len(values):
        kth = values[order[params.top_k - 1]]
        weights = [w if v >= kth else 0.0 for w, v in zip(weights, values, strict=True)]
    total = sum(weights)
    probs = [w / total for w in weights]
    if params.top_p < 1.0:  # drop a character once the mass before it reaches top_p; the first always stays
        before = 0.0
        for i in order:
            before, probs[i] = before + probs[i], probs[i] if before < params.top_p else 0.0
        total = sum(probs)
        probs = [p / total for p in probs]
    return probs
