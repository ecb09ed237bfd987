"""The engine's decode policy: batches below narrow_from decode with the float32 copy, the rest with the model's
own weights; text is streamed at most once per stream interval, with first characters and ends sent at once."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from pathlib import Path

import torch

from chargpt.core.checkpoint import load_checkpoint
from chargpt.core.model import GPT
from chargpt.core.sampling import generate
from chargpt.sampling_params import SamplingParams
from inference_service.decode_policy import DecodePolicy
from inference_service.engine import Engine
from inference_service.engine.request import Finish, GenRequest
from inference_service.metrics import InferenceMetrics
from inference_service.registry import torch_worker

from .conftest import write_checkpoint

PROMPT = "the cat"


def greedy(prompt_ids: list[int], n: int, loop: asyncio.AbstractEventLoop, seed: int = 0) -> GenRequest:
    return GenRequest(prompt_ids=prompt_ids, prompt_chars_dropped=0,
                      params=SamplingParams(temperature=0.0, max_new_tokens=n), seed=seed, deadline=None, loop=loop)


async def run(engine: Engine, requests: list[GenRequest]) -> list[tuple[str, int]]:
    """Each request's text and the number of messages it arrived in."""
    with engine._cond:  # all join in one step
        engine.submit(*requests)

    async def collect(request: GenRequest) -> tuple[str, int]:
        parts, messages = [], 0
        while True:
            chunks = await asyncio.wait_for(request.outbox.take(), 30)
            messages += 1
            for chunk in chunks:
                parts.append(chunk.text)
                if chunk.summary is not None:
                    assert chunk.summary.finish is Finish.LENGTH
                    return "".join(parts), messages
    try:
        return list(await asyncio.gather(*(collect(r) for r in requests)))
    finally:
        await asyncio.to_thread(engine.close)


async def test_small_batches_decode_with_the_float32_copy(tmp_path: Path) -> None:
    """The copy differs from the model only in its final layer norm, which the KV cache never sees, so the text
    shows which weights decoded each character."""
    big = load_checkpoint(write_checkpoint(tmp_path / "a"), "cpu", torch.float32)
    small = copy.deepcopy(big.model)
    with torch.no_grad():
        small.ln_f.weight.copy_(torch.randn(small.ln_f.weight.shape, generator=torch.Generator().manual_seed(1)))
    tokenizer, loop = big.tokenizer, asyncio.get_running_loop()
    ids = tokenizer.encode(PROMPT)

    def greedy_text(model: GPT, prompt: list[int], n: int) -> str:
        return tokenizer.decode(generate(model, torch.tensor([prompt]), n, SamplingParams(temperature=0.0))[0]
                                .tolist()[len(prompt):])
    first = greedy_text(big.model, ids, 1)  # the prefill's character: always the model's own weights
    by_copy = first + greedy_text(small, ids + tokenizer.encode(first), 11)
    assert by_copy != greedy_text(big.model, ids, 12)

    def engine() -> Engine:
        return Engine("t", big.model, tokenizer.vocabulary, max_batch=4, max_queue=8, metrics=InferenceMetrics(),
                      policy=DecodePolicy(max_threads=1, narrow_from=2), float32_model=small)
    assert [text for text, _ in await run(engine(), [greedy(ids, 12, loop)])] == [by_copy]
    pair = await run(engine(), [greedy(ids, 12, loop), greedy(ids, 12, loop, seed=1)])
    assert [text for text, _ in pair] == [greedy_text(big.model, ids, 12)] * 2


async def test_a_stream_interval_sends_fewer_fuller_messages(tmp_path: Path) -> None:
    checkpoint = load_checkpoint(write_checkpoint(tmp_path / "a"), "cpu", torch.float32)
    tokenizer, loop = checkpoint.tokenizer, asyncio.get_running_loop()
    ids = tokenizer.encode(PROMPT)

    def engine(interval: float) -> Engine:
        return Engine("t", checkpoint.model, tokenizer.vocabulary, max_batch=4, max_queue=8,
                      metrics=InferenceMetrics(), policy=DecodePolicy(max_threads=1), stream_interval=interval)
    [(every_step, steps)] = await run(engine(0.0), [greedy(ids, 24, loop)])
    started = time.monotonic()
    [(batched, messages)] = await run(engine(10.0), [greedy(ids, 24, loop)])
    assert batched == every_step and time.monotonic() - started < 10
    assert messages <= 2 < steps  # the first character at once, then the rest with the end


def test_row_groups_policy() -> None:
    policy = DecodePolicy(max_threads=2, parallel_from=4, split_from=16)
    assert [(policy.groups_for(b), policy.threads_for(b)) for b in (1, 4, 15, 16, 64)] == [
        (1, 1), (1, 2), (1, 2), (2, 1), (2, 1)]
    assert policy.reported_split_from == 16
    assert policy.describe_threads() == ("every torch thread from a decode batch of 4, one row group per thread "
                                         "from 16")
    assert DecodePolicy(max_threads=2, parallel_from=128, split_from=16).describe_threads() == (
        "one torch thread below a decode batch of 16, one row group per thread from it")
    assert DecodePolicy(max_threads=3, split_from=1).reported_split_from == 3  # a group needs a row
    assert DecodePolicy(max_threads=1, split_from=2).groups_for(64) == 1
    assert DecodePolicy(max_threads=2).groups_for(256) == 1  # 0: never


async def test_row_groups_decode_the_same_text(tmp_path: Path) -> None:
    """Three ragged requests decoded as two row groups of one thread each give the text one thread gives."""
    checkpoint = load_checkpoint(write_checkpoint(tmp_path / "a"), "cpu", torch.float32)
    tokenizer, loop = checkpoint.tokenizer, asyncio.get_running_loop()
    prompts = [tokenizer.encode(p) for p in ("the cat", "a", "cats and hats")]

    def engine(policy: DecodePolicy) -> Engine:
        return Engine("t", checkpoint.model, tokenizer.vocabulary, max_batch=4, max_queue=8,
                      metrics=InferenceMetrics(), policy=policy)
    threads = torch.get_num_threads()
    try:
        # The texts, not the message counts: how many messages a text arrives in depends on when the event loop
        # takes each outbox (it coalesces while the loop lags), which varied from run to run on an idle host.
        alone = await run(engine(DecodePolicy(max_threads=1)), [greedy(p, 20, loop) for p in prompts])
        one = [text for text, _ in alone]
        split = engine(DecodePolicy(max_threads=2, parallel_from=1, split_from=2))
        groups, steps = split.row_groups, []
        assert groups is not None
        grouped_step = groups.step
        groups.step = lambda *args: steps.append(1) or grouped_step(*args)  # type: ignore[method-assign]
        assert [text for text, _ in await run(split, [greedy(p, 20, loop) for p in prompts])] == one
        assert len(steps) == 19  # every decode step after the prefill's character, all three rows still running
    finally:
        torch.set_num_threads(threads)


def test_score_worker_keeps_the_servers_thread_count() -> None:
    """The engine thread sets one torch thread for small batches; a Score worker first used meanwhile would start
    from that count and keep it for the model's life without its own setting."""
    threads = torch.get_num_threads()
    worker = torch_worker(2)
    try:
        engine_thread = threading.Thread(target=torch.set_num_threads, args=(1,))
        engine_thread.start()
        engine_thread.join()
        assert worker.submit(torch.get_num_threads).result() == 2
        assert worker.submit(lambda: torch.ones(4).sum() and torch.get_num_threads()).result() == 2
    finally:
        worker.shutdown()
        torch.set_num_threads(threads)
