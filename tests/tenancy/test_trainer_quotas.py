"""Trainer quotas through the real client: a refusal is RESOURCE_EXHAUSTED with a QuotaFailure naming the quota,
and creates nothing; over running_jobs a job waits queued. Tenant fairness of the real scheduler."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from chargpt_client import ResourceExhausted, TrainingOptions
from chargpt_client import types as t

from tests.tenancy.trainer_tenants import TenantTrainer, tenant_trainer

TEXT = "a small corpus of plain words, repeated until it is long enough to train on. " * 40  # 3,120 bytes
TINY = t.ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)
QUICK = TrainingOptions(max_steps=2, batch_size=2, eval_interval=2, sample_interval=0, checkpoint_interval=2,
                        warmup_steps=0)
TENANTS = """
[defaults]
running_jobs = 0  # nothing runs here: the quotas are checked against queued jobs

[tenants.queue]
queued_jobs = 1

[tenants.budget]
training_seconds_per_day = 100

[tenants.space]
corpus_bytes = 5000
"""


@pytest.fixture(scope="module")
def quota_clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenantTrainer]:
    root = tmp_path_factory.mktemp("quotas")
    (root / "tenants.toml").write_text(TENANTS)
    keys = {name: (name, "member") for name in ("queue", "budget", "space")}
    with tenant_trainer(root, keys, tenants_file=root / "tenants.toml", builtin_corpora=False) as clients:
        yield clients


def refused(call: object, quota: str, tenant: str) -> ResourceExhausted:
    assert callable(call)
    with pytest.raises(ResourceExhausted) as caught:
        call()
    violations = caught.value.quota_violations
    assert [(v.subject, v.description.split(":")[0]) for v in violations] == [(f"tenant:{tenant}", quota)]
    return caught.value


def test_queued_jobs_refuses_the_next_job_and_a_resume(quota_clients: TenantTrainer) -> None:
    client = quota_clients["queue"]
    corpus = client.upload_corpus("words", TEXT).corpus
    first = client.create_job(corpus.corpus_id, model=TINY, training=QUICK, device="cpu")
    assert first.state == "QUEUED"  # running_jobs = 0: it waits, it is not refused
    refused(lambda: client.create_job(corpus.corpus_id, model=TINY, training=QUICK, device="cpu"), "queued_jobs",
            "queue")
    assert [j.job_id for j in client.list_jobs()] == [first.job_id]  # nothing half-created
    client.cancel_job(first.job_id)
    second = client.create_job(corpus.corpus_id, model=TINY, training=QUICK, device="cpu")
    refused(lambda: client.resume_job(first.job_id), "queued_jobs", "queue")
    assert client.get_job(first.job_id).state == "CANCELLED" and client.get_job(second.job_id).state == "QUEUED"


def test_training_seconds_per_day_counts_queued_budgets(quota_clients: TenantTrainer) -> None:
    client = quota_clients["budget"]
    corpus = client.upload_corpus("words", TEXT).corpus
    budget = TrainingOptions(max_seconds=60, batch_size=2, sample_interval=0)
    client.create_job(corpus.corpus_id, model=TINY, training=budget, device="cpu")
    error = refused(lambda: client.create_job(corpus.corpus_id, model=TINY, training=budget, device="cpu"),
                    "training_seconds_per_day", "budget")
    assert "60 used of 100" in error.quota_violations[0].description
    assert len(client.list_jobs()) == 1


def test_corpus_bytes_refuses_an_upload_before_storing_it(quota_clients: TenantTrainer) -> None:
    client = quota_clients["space"]
    kept = client.upload_corpus("first", TEXT).corpus
    refused(lambda: client.upload_corpus("second", TEXT.upper()), "corpus_bytes", "space")
    assert [c.corpus_id for c in client.list_corpora()] == [kept.corpus_id]
    assert client.upload_corpus("small", TEXT[:1500]).created  # what fits is still taken


def test_one_tenants_quota_does_not_limit_another(quota_clients: TenantTrainer) -> None:
    refused(lambda: quota_clients["space"].upload_corpus("full", TEXT + "x"), "corpus_bytes", "space")
    other = quota_clients["budget"].upload_corpus("roomy", TEXT + "x").corpus  # budget has no corpus_bytes quota
    assert other.tenant == "budget"


def test_the_scheduler_serves_tenants_in_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tenant a queues five tiny jobs, then b one: b's runs second, not sixth."""
    here = Path(__file__).resolve().parents[1] / "trainer_service"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(here), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("FAKE_ENGINE_STEP_SECONDS", "0.01")
    keys = {"a": ("a", "member"), "b": ("b", "member")}
    with tenant_trainer(tmp_path, keys, engine="fake_engine:run_training", builtin_corpora=False) as clients:
        a, b = clients["a"], clients["b"]
        corpus_a = a.upload_corpus("words", TEXT).corpus
        corpus_b = b.upload_corpus("words", TEXT).corpus
        jobs_a = [a.create_job(corpus_a.corpus_id, model=TINY, training=QUICK, device="cpu") for _ in range(5)]
        job_b = b.create_job(corpus_b.corpus_id, model=TINY, training=QUICK, device="cpu")
        for job in [*jobs_a, job_b]:
            for _event in (a if job in jobs_a else b).watch_job(job.job_id, timeout=120):
                pass
        finished = [a.get_job(j.job_id) for j in jobs_a] + [b.get_job(job_b.job_id)]
        assert all(j.state == "SUCCEEDED" for j in finished)
        by_start = sorted(finished, key=lambda j: j.started_time or 0)
        assert [j.tenant for j in by_start] == ["a", "b", "a", "a", "a", "a"]
