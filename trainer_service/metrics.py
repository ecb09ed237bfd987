"""The trainer's Prometheus metrics (exact names are a contract with deploy/ dashboards and alerts)."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from chargpt.server.metrics import RpcMetrics
from chargpt.server.tenancy.labels import TenantLabels
from trainer_service.store import Store
from trainer_service.store_records import STATES, TERMINAL, EventRecord

PREFIX = "chargpt_trainer"
CHECKPOINT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
QUEUE_WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


class TrainerMetrics:
    """One registry per server; updated from the job event log as the server tails it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpcs = RpcMetrics(r, PREFIX)
        self.jobs = Gauge(f"{PREFIX}_jobs", "Training jobs by state", ["state"], registry=r)
        self.steps = Counter(f"{PREFIX}_steps", "Optimizer steps trained", ["job_id"], registry=r)
        self.tokens = Counter(f"{PREFIX}_tokens", "Tokens (characters) trained on", ["job_id"], registry=r)
        self.train_loss = Gauge(f"{PREFIX}_train_loss", "Latest training loss, nats per character", ["job_id"],
                                registry=r)
        self.val_loss = Gauge(f"{PREFIX}_val_loss", "Latest validation loss, nats per character", ["job_id"],
                              registry=r)
        self.tokens_per_second = Gauge(f"{PREFIX}_tokens_per_second", "Recent training throughput", ["job_id"],
                                       registry=r)
        self.checkpoint_write = Histogram(
            f"{PREFIX}_checkpoint_write_seconds",
            "Time to write a checkpoint (engine-reported; else time since the worker's previous event)",
            buckets=CHECKPOINT_BUCKETS, registry=r)
        self.corpus_bytes = Gauge(f"{PREFIX}_corpus_bytes", "Bytes of corpus text stored", registry=r)
        self.jobs_finished = Counter(f"{PREFIX}_jobs_finished", "Jobs that reached a terminal state", ["state"],
                                     registry=r)
        self.jobs_by_executor = Gauge(f"{PREFIX}_jobs_by_executor", "Training jobs by where they last ran "
                                      "(local, slurm, kubernetes) and state", ["executor", "state"], registry=r)
        self.queue_wait = Histogram(f"{PREFIX}_cluster_queue_wait_seconds", "Time from handing a job to the "
                                    "cluster (sbatch, Job created) until it runs there", ["executor"],
                                    buckets=QUEUE_WAIT_BUCKETS, registry=r)
        self.tenant_label = TenantLabels()
        self.jobs_created = Counter(f"{PREFIX}_jobs_created", "Training jobs created, per tenant", ["tenant"],
                                    registry=r)
        self.tenant_jobs = Gauge(f"{PREFIX}_tenant_jobs", "Training jobs by tenant and state (queued: waiting "
                                 "for their turn)", ["tenant", "state"], registry=r)
        for state in STATES:
            self.jobs.labels(state=state)
        for state in TERMINAL:
            self.jobs_finished.labels(state=state)
        self._last_step: dict[str, int] = {}

    def refresh_store_gauges(self, store: Store) -> None:
        for state, count in store.count_by_state().items():
            self.jobs.labels(state=state).set(count)
        counts = store.count_by_executor_state()
        for executor in {"local", *(e for e, _ in counts)}:
            for state in STATES:
                self.jobs_by_executor.labels(executor=executor, state=state).set(counts.get((executor, state), 0))
        self.corpus_bytes.set(store.corpus_bytes())
        self._refresh_tenant_jobs(store.count_by_owner_state())

    def _refresh_tenant_jobs(self, counts: dict[tuple[str, str], int]) -> None:
        """Per-tenant job counts; tenants past the label limit add up under one shared label."""
        totals: dict[tuple[str, str], int] = {}
        for (owner, state), count in counts.items():
            key = (self.tenant_label(owner), state)
            totals[key] = totals.get(key, 0) + count
        for tenant in {t for t, _ in totals}:
            for state in STATES:
                self.tenant_jobs.labels(tenant=tenant, state=state).set(totals.get((tenant, state), 0))

    def observe_queue_wait(self, executor: str, seconds: float) -> None:
        self.queue_wait.labels(executor=executor).observe(max(0.0, seconds))

    def observe_event(self, event: EventRecord) -> None:
        """Account one event from the log (each is seen once, in order)."""
        p, job = event.payload, event.job_id
        if event.kind == "progress":
            step = int(p["step"])
            done = step - self._last_step.get(job, step - 1)
            self._last_step[job] = step
            if done > 0:
                self.steps.labels(job_id=job).inc(done)
                self.tokens.labels(job_id=job).inc(done * int(p.get("tokens_per_step", 0)))
            _set(self.train_loss, job, p["loss"])
            _set(self.tokens_per_second, job, p["tokens_per_second"])
        elif event.kind == "evaluation":
            _set(self.val_loss, job, p["val_loss"])
            _set(self.train_loss, job, p["train_loss"])
        elif event.kind == "checkpoint" and p.get("write_seconds") is not None:
            self.checkpoint_write.observe(float(p["write_seconds"]))
        elif event.kind == "state":
            if p["state"] == "running":
                self._last_step[job] = int(p.get("step", 0))
            else:
                self.tokens_per_second.labels(job_id=job).set(0)
                self._last_step.pop(job, None)
            if p["state"] in TERMINAL:
                self.jobs_finished.labels(state=p["state"]).inc()


def _set(gauge: Gauge, job_id: str, value: object) -> None:
    if isinstance(value, int | float) and math.isfinite(value):
        gauge.labels(job_id=job_id).set(value)
