"""The inference service's Prometheus metrics, all in one per-server registry and labelled by model."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from chargpt.server.metrics import RpcMetrics
from chargpt.server.tenancy.labels import TenantLabels

PREFIX = "chargpt_inference"
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_GAP = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
_BATCH = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
_LOAD = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class InferenceMetrics:
    """Every metric the deploy dashboards and alerts rely on (names are a contract: do not rename)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, m = self.registry, ["model"]
        self.rpcs = RpcMetrics(r, PREFIX)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Arrival to first generated character",
                              m, buckets=_LATENCY, registry=r)
        self.inter_token = Histogram(f"{PREFIX}_inter_token_latency_seconds", "Gap between generated characters",
                                     m, buckets=_TOKEN_GAP, registry=r)
        self.queue_time = Histogram(f"{PREFIX}_request_queue_time_seconds", "Arrival to joining a batch",
                                    m, buckets=_LATENCY, registry=r)
        self.e2e = Histogram(f"{PREFIX}_e2e_request_latency_seconds", "Arrival to the end of a generation",
                             m, buckets=_LATENCY, registry=r)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Sequences in each decode step",
                                    m, buckets=_BATCH, registry=r)
        self.load_seconds = Histogram(f"{PREFIX}_model_load_seconds", "Time to load a model (download included)",
                                      m, buckets=_LOAD, registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens_total", "Prompt characters prefilled", m, registry=r)
        self.generation_tokens = Counter(f"{PREFIX}_generation_tokens_total", "Characters generated",
                                         m, registry=r)
        self.success = Counter(f"{PREFIX}_request_success_total", "Generations that finished",
                               ["model", "finish_reason"], registry=r)
        self.failure = Counter(f"{PREFIX}_request_failure_total",
                               "Generations that did not finish (cancelled, deadline, rejected, error)",
                               ["model", "reason"], registry=r)
        self.score_requests = Counter(f"{PREFIX}_score_requests_total", "Score requests served", m, registry=r)
        self.attention_requests = Counter(f"{PREFIX}_attention_requests_total", "GetAttention requests served",
                                          m, registry=r)
        self.running = Gauge(f"{PREFIX}_requests_running", "Sequences in the decode batch", m, registry=r)
        self.waiting = Gauge(f"{PREFIX}_requests_waiting", "Requests queued for a batch slot", m, registry=r)
        self.http_requests = Counter(f"{PREFIX}_http_requests_total", "OpenAI-compatible HTTP API requests, by "
                                     "route and status", ["route", "status"], registry=r)
        self.models_loaded = Gauge(f"{PREFIX}_models_loaded", "Models in the READY state", registry=r)
        # Per tenant, with bounded label values (TenantLabels): who generates how much, and who is refused.
        self.tenant_label = TenantLabels()
        self.tenant_generated_chars = Counter(f"{PREFIX}_tenant_generated_chars_total",
                                              "Characters generated, by tenant", ["tenant"], registry=r)
        self.tenant_requests = Counter(f"{PREFIX}_tenant_requests_total", "Generations by tenant and outcome "
                                       "(finished, failed, cancelled, rate_limited)", ["tenant", "outcome"], registry=r)
        self.tenant_rate_limited = Counter(f"{PREFIX}_tenant_rate_limited_total", "Generations refused by a per-key "
                                           "limit, by tenant and limit", ["tenant", "limit"], registry=r)
