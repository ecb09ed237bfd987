"""Continuous batching for one model: a KV cache, a step loop on its own thread, requests joining and leaving.

Each step is schedule -> execute -> process outputs, as in vLLM: the Scheduler picks the rows (scheduler.py),
the ModelRunner computes their logits (model_runner.py; small batches on ggml where measured faster,
runner_choice.py), the OutputProcessor samples and files characters
(output_processor.py); the objects they pass are in outputs.py. A request joining in a step gets its first
character from that step's prefill and decodes from the next step on, beside the rows already running.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from chargpt.core.model import GPT, KVCache
from chargpt.errors import UnavailableError
from inference_service.decode_policy import DecodePolicy
from inference_service.engine.ggml_runner import GgmlRunner
from inference_service.engine.model_metrics import ModelMetrics
from inference_service.engine.model_runner import ModelRunner
from inference_service.engine.output_processor import OutputProcessor
from inference_service.engine.request import GenRequest
from inference_service.engine.runner_choice import RunnerByBatch
from inference_service.engine.scheduler import Scheduler
from inference_service.fast_decode import DEFAULT_ATTENTION, Attention, RowGroups
from inference_service.metrics import InferenceMetrics

log = logging.getLogger(__name__)


class Engine:
    """Owns one model's cache and step thread; `submit` is called from the event loop."""

    def __init__(self, name: str, model: GPT, vocabulary: str, max_batch: int, max_queue: int,
                 metrics: InferenceMetrics, cache_dtype: torch.dtype | None = None, window_slide: int = 0,
                 policy: DecodePolicy | None = None, attention: Attention = DEFAULT_ATTENTION,
                 stream_interval: float = 0.0, float32_model: GPT | None = None) -> None:
        """`float32_model`: a float32 copy of a narrower `model`, for batches below policy.narrow_from."""
        self.policy = policy or DecodePolicy(max_threads=torch.get_num_threads())
        self.max_batch = max_batch
        weight = next(model.parameters())
        self.cache = KVCache(model.config, max_batch, device=weight.device, dtype=cache_dtype or weight.dtype)
        model_metrics = ModelMetrics(metrics, name)
        self.model_runner = ModelRunner(model, self.cache, self.policy, attention, window_slide, float32_model)
        self.runner = self._runner(float32_model or model, vocabulary, window_slide)
        self.scheduler = Scheduler(self.runner, model.config.block_size, max_batch, max_queue, model_metrics)
        self.output_processor = OutputProcessor(vocabulary, model_metrics, stream_interval)
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    def _runner(self, float32_model: GPT, vocabulary: str, window_slide: int) -> ModelRunner | RunnerByBatch:
        """The torch runner, or both runners where the policy decodes small batches on ggml (runner_choice.py)."""
        up_to = min(self.policy.ggml_up_to, self.max_batch)
        if not up_to:
            return self.model_runner
        ggml = GgmlRunner(float32_model, vocabulary, up_to, self.policy.max_threads, window_slide)
        return RunnerByBatch(self.model_runner, ggml, up_to, float32_model.config.block_size)

    @property
    def active(self) -> list[GenRequest]:
        """The running requests, request i in cache row i."""
        return self.scheduler.running

    @property
    def row_groups(self) -> RowGroups | None:
        return self.model_runner.row_groups

    # ---- called from the event loop ----

    def submit(self, *requests: GenRequest) -> None:
        """Queue a request's samples, all or none."""
        with self._cond:
            if self._closing:
                raise UnavailableError("the model is being unloaded")
            self.scheduler.add(requests)
            self._cond.notify()

    def cancel_all(self) -> None:
        """Mark every queued and running request cancelled (shutdown after the grace period)."""
        with self._cond:
            for request in [*self.scheduler.running, *self.scheduler.waiting]:
                request.cancel()
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread once current work is done (blocks: call it from a worker thread)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # ---- the engine thread ----

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while (newcomers := self._next_newcomers()) is not None:
                    self.step(newcomers)
        finally:
            self.runner.close()

    def _next_newcomers(self) -> list[GenRequest] | None:
        """Wait for work; the waiting requests that fit in the batch now (None: closed and nothing left)."""
        with self._cond:
            while not self.scheduler.has_work() and not self._closing:
                self._cond.wait()
            if self._closing and not self.scheduler.has_work():
                return None
            return self.scheduler.take_waiting()

    def step(self, newcomers: list[GenRequest]) -> None:
        """One iteration: schedule -> execute -> process outputs, then hand the outputs to the event loop."""
        try:
            scheduled = self.scheduler.schedule(newcomers, time.monotonic())
            self.output_processor.abort(scheduled.aborted)
            if scheduled.rows:
                model_output = self.runner.execute(scheduled)
                finished = self.output_processor.process(scheduled, model_output)
                self.scheduler.free(finished)
        except Exception as exc:  # a bug or a device error: fail this batch, keep serving
            log.exception("engine step failed")
            self.output_processor.fail(self.scheduler.clear(newcomers), exc)
        self.scheduler.record_running()
        if not self.scheduler.running:
            self.policy.apply(self.policy.max_threads)
        self.output_processor.flush()
