"""bench.peers' in-process peers: CTranslate2 (converted from the Hugging Face export) and transformers'
GPT2LMHeadModel, run in this process and timed per generated token (no server, no protocol in their figures)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.serving_common import Tally, Timer
from chargpt.formats.checkpoint_dir import END_OF_TEXT
from chargpt.sampling_params import SAMPLING_PRESETS, SamplingPreset

BALANCED = SAMPLING_PRESETS[SamplingPreset.BALANCED]
PROMPT = "\n"  # every benchmark stream's prompt, as bench.inference's


def timed_in_process(generate: Callable[[list[Timer]], None], streams: int, tally: Tally) -> None:
    """Run `generate` (which ticks one timer per stream per token) and add its timings and this process's CPU
    time (the peer's, as it runs here) to `tally`."""
    timers = [Timer() for _ in range(streams)]
    start, cpu = time.perf_counter(), time.process_time()
    generate(timers)
    tally.add([t.result() for t in timers], time.perf_counter() - start, time.process_time() - cpu, 0.0)


def quiet_transformers() -> None:
    """No weight-loading progress bar from transformers (it would split the table)."""
    from transformers.utils import logging

    logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def convert_to_ctranslate2(hf_dir: Path, out: Path) -> Path:
    """CTranslate2's model directory converted from the Hugging Face export (float32, as exported)."""
    from ctranslate2.converters import TransformersConverter

    quiet_transformers()
    return Path(TransformersConverter(str(hf_dir)).convert(str(out)))


class CTranslate2Peer:
    """ctranslate2.Generator in float32: generate_tokens for one stream, generate_batch (a callback per token) for
    several."""

    name, in_process = "ctranslate2", True

    def __init__(self, ct2_dir: Path, threads: int, new_tokens: int) -> None:
        import ctranslate2

        self.ct2, self.new_tokens = ctranslate2, new_tokens
        self.generator = ctranslate2.Generator(str(ct2_dir), device="cpu", compute_type="float32",
                                               intra_threads=threads)

    def _options(self, chars: int, top_k: int) -> dict[str, Any]:
        # the end-of-text token suppressed, as chargpt has none: every stream runs to its length
        return {"max_length": chars, "sampling_topk": top_k, "sampling_temperature": BALANCED.temperature,
                "suppress_sequences": [[END_OF_TEXT]]}

    async def run_round(self, streams: int, first_seed: int, tally: Tally) -> None:
        self.ct2.set_random_seed(first_seed)
        options = self._options(self.new_tokens, BALANCED.top_k)

        def generate(timers: list[Timer]) -> None:
            if streams == 1:
                for _ in self.generator.generate_tokens(list(PROMPT), **options):
                    timers[0].received(1)
                return
            def tick(step: Any) -> bool:
                timers[step.batch_id].received(1)
                return False  # True would stop this stream

            self.generator.generate_batch([list(PROMPT)] * streams, include_prompt_in_result=False, callback=tick,
                                          **options)

        timed_in_process(generate, streams, tally)

    async def greedy(self, prompt: str, chars: int) -> str:
        result = self.generator.generate_batch([list(prompt)], include_prompt_in_result=False,
                                               **self._options(chars, 1))
        return "".join(result[0].sequences[0])


class StepTimers:
    """A transformers streamer (generate calls put with the prompt, then with each step's new tokens, one per row)
    that ticks every row's timer once per step."""

    def __init__(self, timers: list[Timer]) -> None:
        self.timers, self.prompt_seen = timers, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for timer in self.timers:
            timer.received(1)

    def end(self) -> None:
        pass


class TransformersPeer:
    """GPT2LMHeadModel from the Hugging Face export, model.generate for one stream or a batch of them."""

    name, in_process = "transformers", True

    def __init__(self, hf_dir: Path, threads: int, new_tokens: int) -> None:
        from transformers import AutoTokenizer, GPT2LMHeadModel

        quiet_transformers()

        self.model = GPT2LMHeadModel.from_pretrained(hf_dir)  # in eval mode, as from_pretrained leaves it
        self.tokenizer, self.threads, self.new_tokens = AutoTokenizer.from_pretrained(hf_dir), threads, new_tokens

    def _generate(self, prompt: str, rows: int, chars: int, streamer: StepTimers | None = None,
                  **sampling: Any) -> torch.Tensor:
        torch.set_num_threads(self.threads)
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids.repeat(rows, 1)
        with torch.inference_mode():
            out: torch.Tensor = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=chars,
                                                    streamer=streamer, **sampling)
        return out[:, ids.shape[1]:]

    async def run_round(self, streams: int, first_seed: int, tally: Tally) -> None:
        torch.manual_seed(first_seed)

        def generate(timers: list[Timer]) -> None:
            self._generate(PROMPT, streams, self.new_tokens, StepTimers(timers), do_sample=True,
                           temperature=BALANCED.temperature, top_k=BALANCED.top_k, top_p=1.0)

        timed_in_process(generate, streams, tally)

    async def greedy(self, prompt: str, chars: int) -> str:
        return str(self.tokenizer.decode(self._generate(prompt, 1, chars, do_sample=False)[0]))
