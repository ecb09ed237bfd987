"""The engine's parts driven one step at a time, without its thread: the scheduler's rows and the step's outputs."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path

import pytest
import torch

from chargpt.core.checkpoint import load_checkpoint
from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT, KVCache
from chargpt.errors import ResourceExhaustedError
from chargpt.sampling_params import SamplingParams
from inference_service.decode_policy import DecodePolicy
from inference_service.engine.model_metrics import ModelMetrics
from inference_service.engine.model_runner import ModelRunner
from inference_service.engine.outputs import FinishedRows
from inference_service.engine.request import Finish, GenRequest
from inference_service.engine.scheduler import Scheduler
from inference_service.metrics import InferenceMetrics

from .conftest import drive_steps, write_checkpoint

CONFIG = ModelConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=4, dropout=0.0)


def greedy(prompt_ids: list[int], n: int, deadline: float | None = None) -> GenRequest:
    return GenRequest(prompt_ids=prompt_ids, prompt_chars_dropped=0,
                      params=SamplingParams(temperature=0.0, max_new_tokens=n), seed=0, deadline=deadline,
                      loop=asyncio.get_running_loop())


def scheduler(cache: KVCache, max_queue: int = 8) -> Scheduler:
    return Scheduler(cache, CONFIG.block_size, cache.batch_size, max_queue, ModelMetrics(InferenceMetrics(), "t"))


def test_a_lone_rows_transposed_copies_go_to_float32_weights_only() -> None:
    """The measured layout (policy.lone_transposed) was timed on float32 weights: a narrower model gets no copies,
    its float32 copy (which serves small batches) does."""
    model = GPT(CONFIG).eval()
    cache = KVCache(CONFIG, batch_size=2)
    plain = ModelRunner(model, cache, DecodePolicy(max_threads=1), "sdpa")
    lone = ModelRunner(model, cache, DecodePolicy(max_threads=1, lone_transposed=True), "sdpa")
    assert not plain.decoder.transposed and lone.decoder.transposed
    narrow = ModelRunner(copy.deepcopy(model).to(torch.bfloat16), cache,
                         DecodePolicy(max_threads=1, narrow_from=2, lone_transposed=True), "sdpa", float32_model=model)
    assert not narrow.decoder.transposed and narrow.float32_decoder.transposed


async def test_newcomers_join_after_the_running_rows_and_a_freed_row_takes_the_last() -> None:
    cache = KVCache(CONFIG, batch_size=4)
    s = scheduler(cache, max_queue=2)
    a, b, c = greedy([1, 2], 5), greedy([3], 5), greedy([4, 4, 4], 5)
    s.add((a, b))
    with pytest.raises(ResourceExhaustedError):
        s.add((c,))
    first = s.schedule(s.take_waiting(), time.monotonic())
    assert (first.decode, first.prefill, first.rows, first.rows_changed) == ([], [a, b], [a, b], True)
    assert (a.history, a.cache_len) == ([1, 2], 2)
    cache.k[:, 1, :, :1] = 3.0  # b's key (one position) stands out
    s.free(FinishedRows(rows=[0], non_finite=[]))  # a finished: b moves from row 1 to row 0
    assert s.running == [b] and bool((cache.k[:, 0, :, :1] == 3.0).all()) and int(cache.lengths[0]) == 1
    s.add((c,))
    second = s.schedule(s.take_waiting(), time.monotonic())
    assert (second.decode, second.prefill, second.rows, second.rows_changed) == ([b], [c], [b, c], True)
    third = s.schedule(s.take_waiting(), time.monotonic())
    assert (third.decode, third.prefill, third.rows_changed) == ([b, c], [], False)


async def test_cancelled_and_expired_requests_leave_and_full_windows_slide() -> None:
    s = scheduler(KVCache(CONFIG, batch_size=4))
    a, b = greedy([1], 5), greedy([2], 5)
    s.add((a, b))
    s.schedule(s.take_waiting(), time.monotonic())
    a.cancel()
    b.cache_len = CONFIG.block_size
    late = greedy([3], 5, deadline=time.monotonic() - 1)
    s.add((late,))
    step = s.schedule(s.take_waiting(), time.monotonic())
    assert step.aborted == [(a, Finish.CANCELLED), (late, Finish.DEADLINE)]
    assert (step.rows, step.slides, step.prefill) == ([b], [0], [])


def run_steps(model: GPT, vocabulary: str, arrivals: list[list[GenRequest]]) -> list[int]:
    """drive_steps on a torch runner over four cache rows."""
    cache = KVCache(model.config, batch_size=4)
    runner = ModelRunner(model, cache, DecodePolicy(max_threads=torch.get_num_threads()), "sdpa")
    return drive_steps(runner, model.config.block_size, vocabulary, arrivals)


async def test_a_request_joining_a_running_one_gets_its_alone_text(tmp_path: Path) -> None:
    """Step 0 prefills A; step 1 decodes A and prefills B in one output (A's row, then B's); each text, past the
    context window (A slides twice), is its text alone."""
    checkpoint = load_checkpoint(write_checkpoint(tmp_path / "a"), "cpu", torch.float32)
    model, vocabulary = checkpoint.model, checkpoint.tokenizer.vocabulary
    prompts = [checkpoint.tokenizer.encode(p) for p in ("the cat", "a")]
    alone = []
    for ids in prompts:
        request = greedy(ids, 40)
        assert run_steps(model, vocabulary, [[request]]) == [1] * 40
        alone.append(request.history)
    a, b = greedy(prompts[0], 40), greedy(prompts[1], 40)
    assert run_steps(model, vocabulary, [[a], [b]]) == [1] + [2] * 39 + [1]
    window = model.config.block_size
    assert [a.history, b.history] == alone and len(a.history) > window + window // 4  # two slides
