"""The /metrics endpoint exposes the trainer's metric names (a contract with deploy/) with sane values."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from trainer_harness import Trainer, sample_text

from chargpt.v1 import trainer_pb2 as S


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


async def test_metrics_after_a_job(tmp_path: Path, fake_engine_env: pytest.MonkeyPatch) -> None:
    trainer = Trainer(tmp_path / "data", metrics_port=0)
    await trainer.start()
    try:
        corpus = (await trainer.upload(sample_text(2000))).corpus
        job = await trainer.create_job(corpus.corpus_id, max_steps=20)
        fake_engine_env.setenv("FAKE_ENGINE_STEP_SECONDS", "0.2")  # a slow second job to look at mid-run
        slow = await trainer.create_job(corpus.corpus_id, max_steps=10_000)
        await trainer.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED])
        await trainer.wait_for(slow.job_id, [S.JOB_STATE_RUNNING], min_step=3)
        await asyncio.sleep(0.3)  # the event tail polls every 0.1 s in tests
        live = scrape(trainer.metrics_port)
        await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=slow.job_id))
        with pytest.raises(grpc.aio.AioRpcError):
            await trainer.stub.GetTrainingJob(S.GetTrainingJobRequest(job_id="missing"))
        await asyncio.sleep(0.3)
        m = scrape(trainer.metrics_port)
    finally:
        await trainer.stop()
    assert live[("chargpt_trainer_jobs", (("state", "running"),))] == 1
    assert live[("chargpt_trainer_tokens_per_second", (("job_id", slow.job_id),))] > 0
    assert live[("chargpt_trainer_steps_total", (("job_id", slow.job_id),))] >= 3
    j = (("job_id", job.job_id),)
    assert m[("chargpt_trainer_jobs", (("state", "succeeded"),))] == 1
    assert m[("chargpt_trainer_jobs", (("state", "running"),))] == 0
    assert m[("chargpt_trainer_jobs", (("state", "queued"),))] == 0
    assert m[("chargpt_trainer_jobs_finished_total", (("state", "succeeded"),))] == 1
    assert m[("chargpt_trainer_jobs", (("state", "cancelled"),))] == 1
    assert m[("chargpt_trainer_jobs_finished_total", (("state", "cancelled"),))] == 1
    assert m[("chargpt_trainer_jobs_finished_total", (("state", "failed"),))] == 0
    assert m[("chargpt_trainer_steps_total", j)] == 20
    assert m[("chargpt_trainer_tokens_total", j)] == 20 * 4 * 16  # steps x batch x block
    assert 0 < m[("chargpt_trainer_train_loss", j)] < 5 and 0 < m[("chargpt_trainer_val_loss", j)] < 5
    assert m[("chargpt_trainer_tokens_per_second", j)] == 0  # the job is over
    assert m[("chargpt_trainer_checkpoint_write_seconds_count", ())] >= 4
    assert m[("chargpt_trainer_checkpoint_write_seconds_sum", ())] > 0
    assert m[("chargpt_trainer_corpus_bytes", ())] == corpus.size_bytes
    assert m[("chargpt_trainer_rpcs_total", (("code", "OK"), ("method", "CreateTrainingJob")))] == 2
    assert m[("chargpt_trainer_rpcs_total", (("code", "NOT_FOUND"), ("method", "GetTrainingJob")))] == 1
