"""The next-character choice made visible: each generated character's candidates before and after sampling filters.

The inference service returns, per generated character, the top-N candidates of the model's RAW softmax
(`logprobs=N`, N <= 20). The "after" distribution here applies the sampler's steps to those N candidates only, in
the sampler's order: divide log-probabilities by the temperature, keep the top-k (ties kept), softmax, drop a
candidate once the mass before it reaches top-p, renormalise. It is therefore the sampler's distribution
*restricted to the returned top-N* (exact whenever the characters outside the top-N are filtered out anyway, e.g.
top-k <= N; with logprobs=20 and a 65-character vocabulary it holds nearly all the mass). Penalties, min-p and
logit bias are not applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from chargpt_client import types as t

Candidates = list[tuple[str, float]]  # (character, probability), most likely first


@dataclass(frozen=True)
class NextCharStep:
    """One generation step: the text so far, the character sampled, and the candidates before/after filtering."""

    context: str
    chosen: str
    raw: Candidates  # the model's raw probabilities of the returned top-N (they sum to <= 1)
    filtered: Candidates  # after temperature, top-k and top-p over those candidates (sums to 1)

    @property
    def raw_mass(self) -> float:
        """How much of the raw distribution the returned candidates cover."""
        return sum(p for _, p in self.raw)


def apply_sampling(top: Sequence[tuple[str, float]], temperature: float, top_k: int = 0,
                   top_p: float = 1.0) -> Candidates:
    """Candidates (character, raw logprob) -> (character, probability) after the sampler's filters, summing to 1.

    temperature <= 0 is greedy (all mass on the most likely); top_k <= 0 and top_p >= 1 switch those filters off.
    """
    if not top:
        return []
    ranked = sorted(top, key=lambda c: c[1], reverse=True)
    if temperature <= 0:
        return [(ch, 1.0 if i == 0 else 0.0) for i, (ch, _) in enumerate(ranked)]
    scaled = [lp / temperature for _, lp in ranked]
    if 0 < top_k < len(scaled):
        kth = scaled[top_k - 1]
        scaled = [s if s >= kth else -math.inf for s in scaled]  # ties with the k-th are kept
    peak = scaled[0]
    weights = [math.exp(s - peak) for s in scaled]
    total = sum(weights)
    probs = [w / total for w in weights]
    if top_p < 1.0:
        before = 0.0
        for i, p in enumerate(probs):
            if before >= top_p:
                probs[i] = 0.0
            before += p
        total = sum(probs)
        probs = [p / total for p in probs]
    return [(ch, p) for (ch, _), p in zip(ranked, probs, strict=True)]


def next_char_steps(result: t.GenerationResult, prompt: str = "", *, temperature: float | None = None,
                    top_k: int | None = None, top_p: float | None = None) -> list[NextCharStep]:
    """One step per generated character of a generation requested with logprobs=N.

    The filters default to the ones the generation used (its summary: the preset's values when a preset was used).
    """
    if not result.logprobs:
        raise ValueError("the generation has no logprobs: request it with logprobs=N (1..20)")
    s = result.summary
    temp = s.temperature if temperature is None else temperature
    k = s.top_k if top_k is None else top_k
    p = s.top_p if top_p is None else top_p
    steps: list[NextCharStep] = []
    context = prompt
    for entry in result.logprobs:
        top = entry.top if any(ch == entry.token for ch, _ in entry.top) else [*entry.top, (entry.token, entry.logprob)]
        steps.append(NextCharStep(context=context, chosen=entry.token,
                                  raw=[(ch, math.exp(lp)) for ch, lp in top],
                                  filtered=apply_sampling(top, temp, k, p)))
        context += entry.token
    return steps
