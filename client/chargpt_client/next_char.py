"""The next-character choice made visible: each generated character's candidates before and after sampling filters.

The inference service returns, per generated character, the top-N candidates of the model's RAW softmax
(`logprobs=N`, N <= 20). The "after" distribution applies the service's own sampling rule
(chargpt.sampling_reference: penalties, logit bias, min-p, temperature, top-k, top-p) to those N candidates only.
It is therefore the sampler's distribution *restricted to the returned top-N* (exact whenever the characters
outside the top-N are filtered out anyway, e.g. top-k <= N; with logprobs=20 and a 65-character vocabulary it holds
nearly all the mass), with one more approximation: the repetition penalty divides positive logits and multiplies
negative ones, and log-probabilities (all <= 0) do not carry the logits' signs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from chargpt.sampling_params import SamplingParams
from chargpt.sampling_reference import Candidates, sampling_distribution
from chargpt_client import types as t
from chargpt_client.sampling import SamplingOptions


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
    """Candidates (character, raw logprob) -> (character, probability) after temperature, top-k and top-p, most
    likely first, summing to 1. temperature <= 0 is greedy; top_k <= 0 and top_p >= 1 switch those filters off."""
    ranked = sorted(top, key=lambda c: c[1], reverse=True)
    return sampling_distribution(ranked, SamplingParams.model_construct(temperature=temperature, top_k=top_k,
                                                                        top_p=top_p))


def next_char_steps(result: t.GenerationResult, prompt: str = "", *, temperature: float | None = None,
                    top_k: int | None = None, top_p: float | None = None,
                    options: SamplingOptions | None = None) -> list[NextCharStep]:
    """One step per generated character of a generation requested with logprobs=N.

    temperature, top-k and top-p default to the ones the generation used (its summary: the preset's values when a
    preset was used); the rest (penalties, min-p, logit bias) to `options`, which the summary does not echo.
    """
    if not result.logprobs:
        raise ValueError("the generation has no logprobs: request it with logprobs=N (1..20)")
    s = result.summary
    echoed = {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p}
    explicit = {k: v for k, v in {"temperature": temperature, "top_k": top_k, "top_p": top_p}.items() if v is not None}
    params = SamplingParams.model_construct(**{**echoed, **(options.given() if options else {}), **explicit})
    steps: list[NextCharStep] = []
    generated = ""
    for entry in result.logprobs:
        top = entry.top if any(ch == entry.token for ch, _ in entry.top) else [*entry.top, (entry.token, entry.logprob)]
        ranked = sorted(top, key=lambda c: c[1], reverse=True)
        steps.append(NextCharStep(context=prompt + generated, chosen=entry.token,
                                  raw=[(ch, math.exp(lp)) for ch, lp in top],
                                  filtered=sampling_distribution(ranked, params, prompt, generated)))
        generated += entry.token
    return steps
