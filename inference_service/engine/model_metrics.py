"""The metric children of one model's engine, bound once (labels() per token would be slow)."""

from __future__ import annotations

from prometheus_client import Counter

from inference_service.metrics import InferenceMetrics


class ModelMetrics:
    """InferenceMetrics' series for one model: the scheduler records queueing and batches, the output processor
    latencies and finishes."""

    def __init__(self, metrics: InferenceMetrics, name: str) -> None:
        self.ttft = metrics.ttft.labels(model=name)
        self.inter_token = metrics.inter_token.labels(model=name)
        self.queue_time = metrics.queue_time.labels(model=name)
        self.e2e = metrics.e2e.labels(model=name)
        self.batch_size = metrics.batch_size.labels(model=name)
        self.prompt_tokens = metrics.prompt_tokens.labels(model=name)
        self.generation_tokens = metrics.generation_tokens.labels(model=name)
        self.running = metrics.running.labels(model=name)
        self.waiting = metrics.waiting.labels(model=name)
        self._success, self._failure, self._name = metrics.success, metrics.failure, name

    def success(self, reason: str) -> Counter:
        return self._success.labels(model=self._name, finish_reason=reason)

    def failure(self, reason: str) -> Counter:
        return self._failure.labels(model=self._name, reason=reason)
