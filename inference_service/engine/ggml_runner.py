"""A second decode runner: llama.cpp's ggml (through llama-cpp-python's batch API) turns token batches into logits.

Everything else stays chargpt's: the scheduler picks the rows, the output processor samples, stops, seeds and
counts. The runner only holds each running sequence's keys and values in a llama.cpp context (one sequence id per
cache row, one KV stream of block_size cells per sequence) and, each step, sends one llama_decode batch with every
row's pending character, the newcomers' prompts and the sliding rows' rebuilt windows (model_runner.py's doc).

Why: a lone stream's step reads all 42 MB of the notebook-size model's weights, and torch's eager matrix-vector
products read them on one core (a second torch thread does not pay at these sizes). ggml's threads split every
product across the cores: on the AVX2 host of issue 25 a one-row step took 1.6 ms against torch's 3.3 ms. The
calibration measures both per batch size (serving_choices.py), and engine/runner_choice.py decodes small batches
here and large ones on torch. ggml's threads spin at a barrier after every op, so on a busy host a step on every
core can be 200x slower than on one: the thread count is measured while serving (ggml_threads.py).

The numbers differ from the torch runner's: llama.cpp's gpt2 graph uses the tanh approximation of GELU (the model
uses the exact one) and keeps keys and values in float16 (a float32 KV cache made its steps 2-4x slower on that
host), so log-probabilities differ by about 1e-2, and a seeded sample can differ once a step's choice is close.
A row moves by relabelling its sequence id: no keys or values are copied.
"""

from __future__ import annotations

import ctypes
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chargpt.core.checkpoint import TIED_KEY
from chargpt.core.model import GPT
from inference_service.engine.ggml_threads import ThreadChooser
from inference_service.engine.outputs import ModelRunnerOutput, SchedulerOutput
from inference_service.engine.request import GenRequest

log = logging.getLogger(__name__)
UBATCH = 512  # tokens per ggml graph evaluation (llama.cpp splits a larger batch)
LLAMA_MAX_SEQ = 256  # the most sequences one llama.cpp context holds


def ggml_available() -> bool:
    """Whether llama-cpp-python is installed (it comes with the dev dependencies and the `ggml` extra)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


_LOG_CALLBACK: Any = None  # kept referenced: llama.cpp calls it for as long as the process lives


def _route_llama_logs(llama: Any) -> None:
    """llama.cpp's log lines into this module's logger: errors as errors, the rest (a few dozen lines per load, and
    warnings that do not apply here, e.g. a context padded past the model's) at debug."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        error_level = 4  # ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT

        def forward(level: int, text: bytes, _: Any) -> None:
            log.log(logging.ERROR if level == error_level else logging.DEBUG, "llama.cpp: %s",
                    text.decode("utf-8", "replace").rstrip())
        _LOG_CALLBACK = llama.llama_log_callback(forward)
        llama.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def placeholder_vocabulary(size: int) -> str:
    """`size` distinct characters, for a GGUF whose tokenizer is never used (the calibration's)."""
    return "".join(chr(0x100 + i) for i in range(size))


def window_keep(block_size: int, window_slide: int) -> int:
    """Characters a sequence keeps when it fills the window (model_runner.py's module doc)."""
    return block_size - min(window_slide or max(1, block_size // 4), block_size)


def write_model_gguf(model: GPT, vocabulary: str, path: Path) -> None:
    """The model as a float32 GGUF (chargpt.formats' llama.cpp export of its in-memory weights)."""
    from chargpt.formats.checkpoint_dir import Architecture, checkpoint_in_memory
    from chargpt.formats.llama_gguf import write_gguf

    c = model.config
    arch = Architecture(c.vocab_size, c.block_size, c.n_layer, c.n_embd, c.n_head, c.dropout, c.bias)
    tensors = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in model.state_dict().items()
               if k != TIED_KEY}
    write_gguf(checkpoint_in_memory(arch, vocabulary, tensors), path, "f32")


class GgmlRunner:
    """Up to `rows` sequences in one llama.cpp context; the same step interface as ModelRunner."""

    def __init__(self, model: GPT, vocabulary: str, rows: int, threads: int, window_slide: int = 0) -> None:
        import llama_cpp as llama

        _route_llama_logs(llama)
        self.llama, self.max_rows = llama, rows
        self.block_size, self.vocab_size = model.config.block_size, model.config.vocab_size
        self.keep = window_keep(self.block_size, window_slide)
        llama.llama_backend_init()
        with tempfile.TemporaryDirectory(prefix="chargpt-ggml-") as tmp:
            path = Path(tmp) / "model.gguf"
            write_model_gguf(model, vocabulary, path)
            params = llama.llama_model_default_params()
            params.use_mmap = False  # read into memory: the file goes with this directory
            self._model = llama.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise RuntimeError("llama.cpp could not load the model's GGUF export")
        self._ctx = llama.llama_init_from_model(self._model, self._context_params(threads))
        if not self._ctx:
            llama.llama_model_free(self._model)
            raise RuntimeError(f"llama.cpp could not make a context for {rows} sequences")
        self._memory = llama.llama_get_memory(self._ctx)
        self._vocab_out = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(self._model))  # + end-of-text
        self._batch = llama.llama_batch_init(rows * self.block_size, 0, 1)
        self.threads, self._threads_now = ThreadChooser(threads), threads
        self.seq_of_row: list[int] = []  # row i's llama.cpp sequence id
        self._free = list(range(rows - 1, -1, -1))

    def _context_params(self, threads: int) -> Any:
        params = self.llama.llama_context_default_params()
        params.n_seq_max, params.kv_unified = self.max_rows, False  # a KV stream of block_size cells per sequence
        params.n_ctx = params.n_batch = self.max_rows * self.block_size  # a step may rebuild every row's window
        params.n_ubatch = min(UBATCH, params.n_batch)
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        return params

    # ---- the step ----

    def execute(self, scheduled: SchedulerOutput) -> ModelRunnerOutput:
        """The step's logits: the decode rows' next characters, then the newcomers' first (ModelRunner's order)."""
        tokens: list[tuple[int, int, int, bool]] = []  # (token, position, sequence, wants logits)
        slides = set(scheduled.slides)
        for index, request in enumerate(scheduled.decode):
            if index in slides:
                self._forget(self.seq_of_row[index])
                tokens += self._window(request, self.seq_of_row[index], self.keep)
                request.cache_len = self.keep
            tokens.append((request.history[-1], request.cache_len, self.seq_of_row[index], True))
            request.cache_len += 1
        for request in scheduled.prefill:
            sequence = self._free.pop()
            self.seq_of_row.append(sequence)
            prompt = request.prompt_ids
            tokens += [(t, p, sequence, p == len(prompt) - 1) for p, t in enumerate(prompt)]
        return ModelRunnerOutput(self._decode(tokens, len(scheduled.rows)))

    def load(self, requests: list[GenRequest]) -> None:
        """Take over running sequences from another runner: rows 0.. rebuilt from their histories."""
        self.clear()
        tokens: list[tuple[int, int, int, bool]] = []
        for request in requests:
            sequence = self._free.pop()
            self.seq_of_row.append(sequence)
            tokens += self._window(request, sequence, request.cache_len)
        if tokens:
            self._decode(tokens, 0)

    @staticmethod
    def _window(request: GenRequest, sequence: int, length: int) -> list[tuple[int, int, int, bool]]:
        """The last `length` characters before the pending one, at positions 0..length-1, without logits."""
        context = request.history[-(length + 1):-1] if length else []
        return [(t, p, sequence, False) for p, t in enumerate(context)]

    def _decode(self, tokens: list[tuple[int, int, int, bool]], outputs: int, threads: int | None = None
                ) -> torch.Tensor:
        """One llama_decode of `tokens`; the (outputs, V) logits of the tokens that want them, in batch order. A
        step that only decodes (one token per row) is timed for the thread choice (ggml_threads.py), unless
        `threads` fixes the count."""
        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, (token, position, sequence, logits) in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0], batch.logits[i] = sequence, logits
        decode_only = threads is None and 0 < outputs == len(tokens)
        if threads is None:
            threads = self.threads.threads_for(outputs) if decode_only else self.threads.best_for(outputs)
        self._use_threads(threads)
        started = time.perf_counter()
        status = self.llama.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        if decode_only:
            self.threads.record(outputs, self._threads_now, time.perf_counter() - started)
        if not outputs:
            return torch.empty(0, self.vocab_size)
        pointer = self.llama.llama_get_logits(self._ctx)
        flat = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                     shape=(outputs, self._vocab_out))
        return torch.from_numpy(flat[:, : self.vocab_size].copy())  # the end-of-text column is not chargpt's

    def _use_threads(self, threads: int) -> None:
        if threads != self._threads_now:
            self.llama.llama_set_n_threads(self._ctx, threads, threads)
            self._threads_now = threads

    # ---- rows (the scheduler keeps running sequences in rows 0..B-1) ----

    def remove_row(self, index: int, last: int, length: int) -> None:
        """Row `index`'s sequence is gone; the last row's moves into it (a relabel: no keys or values move)."""
        self._forget(self.seq_of_row[index])
        self._free.append(self.seq_of_row[index])
        self.seq_of_row[index] = self.seq_of_row[last]
        self.seq_of_row.pop()

    def clear_row(self, index: int) -> None:
        self._forget(self.seq_of_row[index])

    def clear(self) -> None:
        """Forget every sequence."""
        self.llama.llama_memory_clear(self._memory, True)
        self.seq_of_row = []
        self._free = list(range(self.max_rows - 1, -1, -1))

    def _forget(self, sequence: int, start: int = -1) -> None:
        """Drop a sequence's positions from `start` on (-1: all of them)."""
        self.llama.llama_memory_seq_rm(self._memory, sequence, start, -1)

    def close(self) -> None:
        self.llama.llama_batch_free(self._batch)
        self.llama.llama_free(self._ctx)
        self.llama.llama_model_free(self._model)


def timed_step(runner: GgmlRunner, batch: int, position: int, first: int, threads: int) -> Callable[[], None]:
    """For the calibration: sequences first..first+batch-1, holding `position` characters each, decode one more
    on `threads` threads (again at every call)."""
    sequences = range(first, first + batch)
    runner._forget(first)
    runner._decode([(0, p, first, False) for p in range(position)], 0)
    for sequence in sequences[1:]:  # the same window in every sequence: a copy, not another prefill
        runner._forget(sequence)
        runner.llama.llama_memory_seq_cp(runner._memory, first, sequence, -1, -1)
    step = [(0, position, sequence, True) for sequence in sequences]

    def call() -> None:
        for sequence in sequences:
            runner._forget(sequence, position)
        runner._decode(step, batch, threads)
    return call
