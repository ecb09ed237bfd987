"""ScoreBatcher: waiting Score requests share passes, results equal one-at-a-time scoring, bad texts fail alone."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from chargpt.core.checkpoint import load_checkpoint
from chargpt.errors import InvalidArgumentError
from inference_service import score_batcher
from inference_service.score_batcher import ScoreBatcher
from inference_service.scoring import ScoreJob, score_many

from .conftest import write_checkpoint

TEXTS = ["to be, or not to be, that is the question: whether 'tis nobler in the mind to suffer" * 2,
         "the slings and arrows", "ab", "of outrageous fortune, or to take arms against a sea of troubles"]


async def test_waiting_requests_share_passes_and_match_scoring_alone(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = load_checkpoint(write_checkpoint(tmp_path / "m"))
    calls: list[list[ScoreJob]] = []
    real = score_batcher.score_many

    def spy(model, jobs, tokens_per_pass):  # type: ignore[no-untyped-def]
        calls.append(jobs)
        return real(model, jobs, tokens_per_pass)
    monkeypatch.setattr(score_batcher, "score_many", spy)
    with ThreadPoolExecutor(max_workers=1) as pool:
        batcher = ScoreBatcher(checkpoint, pool, tokens_per_pass=64)
        strides = [32, 32, 7, 5]
        together = await asyncio.gather(*(batcher.score(t, s, True) for t, s in zip(TEXTS, strides, strict=True)))
    assert [len(jobs) for jobs in calls] == [4]  # all four were waiting when the worker started
    for text, stride, result in zip(TEXTS, strides, together, strict=True):
        job = ScoreJob(checkpoint.tokenizer.encode(text), stride, want_logprobs=True)
        alone = score_many(checkpoint.model, [job], tokens_per_pass=1)[0]  # one window per pass
        assert result.num_tokens == len(text) - 1
        assert np.allclose(result.token_logprobs, alone.token_logprobs, atol=1e-5)
        assert result.mean_nll == pytest.approx(alone.mean_nll, rel=1e-6)


async def test_a_text_outside_the_vocabulary_fails_alone(tmp_path: Path) -> None:
    checkpoint = load_checkpoint(write_checkpoint(tmp_path / "m"))
    with ThreadPoolExecutor(max_workers=1) as pool:
        batcher = ScoreBatcher(checkpoint, pool, tokens_per_pass=2048)
        good, bad = await asyncio.gather(batcher.score(TEXTS[1], 32, False),
                                         batcher.score("caf\u00e9 au lait", 32, False), return_exceptions=True)
    assert isinstance(bad, InvalidArgumentError) and bad.field == "text" and "\u00e9" in str(bad)
    assert not isinstance(good, BaseException) and good.num_tokens == len(TEXTS[1]) - 1


async def test_a_cancelled_request_is_skipped_and_the_rest_still_score(tmp_path: Path) -> None:
    checkpoint = load_checkpoint(write_checkpoint(tmp_path / "m"))
    with ThreadPoolExecutor(max_workers=1) as pool:
        batcher = ScoreBatcher(checkpoint, pool, tokens_per_pass=2048)
        gone = asyncio.create_task(batcher.score(TEXTS[0], 32, False))
        kept = asyncio.create_task(batcher.score(TEXTS[3], 32, False))
        await asyncio.sleep(0)  # both are waiting
        gone.cancel()
        result = await kept
    assert result.num_tokens == len(TEXTS[3]) - 1 and gone.cancelled()
