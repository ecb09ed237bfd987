"""/v1/completions over InferenceService, as the gRPC servicer is: same SamplingParams, engines, seeds and limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from chargpt import errors
from inference_service.engine.request import Chunk, Finish
from inference_service.logprobs import TokenLogprob
from inference_service.openai_api.schemas import CompletionRequest, StreamOptions
from inference_service.service import Generation, InferenceService

FINISH_REASONS = {Finish.LENGTH: "length", Finish.STOP: "stop"}


@dataclass
class Run:
    """One prompt's n samples; its choices are numbered from `base` (OpenAI: prompt index * n + sample)."""

    prompt: str
    base: int
    generation: Generation


@dataclass
class Choice:
    """One choice being assembled: text, logprobs aligned with the released text, finish reason."""

    index: int
    echo: str
    offset: int
    text: list[str] = field(default_factory=list)
    pending: list[TokenLogprob] = field(default_factory=list)
    released: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    generated: int = 0  # characters released so far; the exact count generated once the sample has finished

    def add(self, chunk: Chunk) -> tuple[str, list[TokenLogprob]]:
        """Text and its logprobs from this chunk (the echo first); characters of a stop sequence are dropped."""
        text, self.echo = self.echo + chunk.text, ""
        self.pending.extend(chunk.logprobs)
        entries, self.pending = self.pending[: len(chunk.text)], self.pending[len(chunk.text):]
        self.text.append(text)
        self.released.extend(entries)
        self.generated += len(chunk.text)
        if chunk.summary is not None:
            self.finish_reason = FINISH_REASONS.get(chunk.summary.finish)
            self.generated = chunk.summary.generated_tokens
        return text, entries

    def logprobs_json(self, entries: list[TokenLogprob], top: int | None) -> dict[str, Any] | None:
        """OpenAI's legacy completions logprobs object for the request's `logprobs` (None: none; 0: the sampled
        character's alone, as the reference gives it); text_offset counts from the choice's text start."""
        if top is None:
            return None
        offsets = list(range(self.offset, self.offset + len(entries)))
        self.offset += len(entries)
        tops = [dict(e.top) if top else {e.token: e.logprob} for e in entries]
        return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": tops, "text_offset": offsets}


def start_runs(service: InferenceService, body: CompletionRequest) -> list[Run]:
    """Validate and queue every prompt's samples, all or none."""
    prompts = body.prompts()
    entry = service.registry.get(body.model)
    vocabulary = entry.checkpoint.tokenizer.vocabulary if entry.checkpoint is not None else ""
    with service.rejections(body.model):
        params = body.sampling_params(vocabulary)
    runs: list[Run] = []
    try:
        for k, prompt in enumerate(prompts):
            generation = service.generate(body.model, prompt, params, None, body.priority or 0)
            runs.append(Run(prompt, k * params.n, generation))
    except BaseException:
        abandon(runs)
        raise
    return runs


def abandon(runs: list[Run]) -> None:
    """Cancel and release runs whose chunks were never read (their generator's cleanup never ran)."""
    for run in runs:
        run.generation.abandon()


async def merged_chunks(runs: list[Run]) -> AsyncGenerator[list[tuple[Run, Chunk]], None]:
    """Every run's chunks as they come, coalesced per choice (one entry per choice per batch, see Outbox);
    closing this early (client gone) cancels every sample."""
    if len(runs) == 1:  # one prompt: its Outbox already coalesces, no task in between
        run = runs[0]
        async with contextlib.aclosing(run.generation.chunks()) as chunks:
            async for chunk in chunks:
                yield [(run, chunk)]
        return
    queue: asyncio.Queue[tuple[Run, Chunk | BaseException | None]] = asyncio.Queue()

    async def pump(run: Run) -> None:
        try:
            async with contextlib.aclosing(run.generation.chunks()) as chunks:
                async for chunk in chunks:
                    queue.put_nowait((run, chunk))
            queue.put_nowait((run, None))
        except Exception as exc:
            queue.put_nowait((run, exc))

    tasks = [asyncio.create_task(pump(run)) for run in runs]
    try:
        finished = 0
        while finished < len(runs):
            batch: dict[int, tuple[Run, Chunk]] = {}
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            for run, item in items:
                if item is None:
                    finished += 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    _merge(batch, run, item)
            if batch:
                yield list(batch.values())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        abandon(runs)


def _merge(batch: dict[int, tuple[Run, Chunk]], run: Run, chunk: Chunk) -> None:
    """Append `chunk` to the choice's entry in `batch` (a lagging reader gets one event per choice)."""
    key = run.base + chunk.index
    if key not in batch:
        batch[key] = (run, Chunk(chunk.index, chunk.text, list(chunk.logprobs), chunk.summary))
        return
    merged = batch[key][1]
    merged.text += chunk.text
    merged.logprobs.extend(chunk.logprobs)
    merged.summary = chunk.summary or merged.summary


def check_finished(run: Run, chunk: Chunk) -> None:
    """A sample that the server cancelled (at shutdown, once the grace period ended) must not look complete: it is
    an error (503). The reader's own cancellation (a client gone) never gets here: it stopped reading."""
    if chunk.summary is None or chunk.summary.finish is not Finish.CANCELLED:
        return
    why = "is shutting down" if run.generation.registry.draining else "cancelled it"
    raise errors.UnavailableError(f"the server {why} before the completion finished, after "
                                  f"{chunk.summary.generated_tokens} characters: it is incomplete; retry")


def new_choices(body: CompletionRequest, runs: list[Run]) -> dict[int, Choice]:
    echo = body.echo
    return {run.base + i: Choice(run.base + i, run.prompt if echo else "", len(run.prompt) if echo else 0)
            for run in runs for i in range(len(run.generation.jobs))}


def usage(runs: list[Run], choices: dict[int, Choice]) -> dict[str, int]:
    prompt = sum(run.generation.prompt_tokens for run in runs)
    completion = sum(c.generated for c in choices.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def envelope(body: CompletionRequest, completion_id: str, created: int) -> dict[str, Any]:
    return {"id": completion_id, "object": "text_completion", "created": created, "model": body.model}


async def complete(body: CompletionRequest, runs: list[Run]) -> dict[str, Any]:
    """The whole completion at once."""
    choices = new_choices(body, runs)
    async with contextlib.aclosing(merged_chunks(runs)) as chunks:
        async for batch in chunks:
            for run, chunk in batch:
                choices[run.base + chunk.index].add(chunk)
                check_finished(run, chunk)
    out = [{"index": c.index, "text": "".join(c.text), "logprobs": c.logprobs_json(c.released, body.logprobs),
            "finish_reason": c.finish_reason} for c in sorted(choices.values(), key=lambda c: c.index)]
    return {**envelope(body, f"cmpl-{uuid.uuid4().hex}", int(time.time())), "choices": out,
            "usage": usage(runs, choices)}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <compact JSON>` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


async def stream(body: CompletionRequest, runs: list[Run]) -> AsyncIterator[bytes]:
    """Server-sent events: per choice, one chunk with everything it produced since its previous one; a usage
    chunk (`choices: []`) if stream_options.include_usage asks for it; then `data: [DONE]`."""
    choices = new_choices(body, runs)
    base = envelope(body, f"cmpl-{uuid.uuid4().hex}", int(time.time()))
    options = body.stream_options or StreamOptions()
    continuous = bool(options.include_usage and options.continuous_usage_stats)  # vLLM: needs include_usage
    async with contextlib.aclosing(merged_chunks(runs)) as chunks:
        async for batch in chunks:
            for run, chunk in batch:
                choice = choices[run.base + chunk.index]
                text, entries = choice.add(chunk)
                if text or chunk.summary is not None:  # else only held-back characters: nothing to show yet
                    event = {"index": choice.index, "text": text, "logprobs": choice.logprobs_json(
                        entries, body.logprobs), "finish_reason": choice.finish_reason}
                    running = {"usage": usage(runs, choices)} if continuous else {}
                    yield sse({**base, "choices": [event], **running})
                check_finished(run, chunk)
    if options.include_usage:
        yield sse({**base, "choices": [], "usage": usage(runs, choices)})
    yield sse("[DONE]")
