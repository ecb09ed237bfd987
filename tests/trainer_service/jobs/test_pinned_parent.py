"""A fine-tune pins its parent checkpoint at creation; a failed job's error states its reason first (issue 23.7)."""

from __future__ import annotations

import traceback

from trainer_harness import Trainer, finetune, sample_text

from chargpt.core.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, file_sha256, read_manifest
from chargpt.v1 import common_pb2
from chargpt.v1 import trainer_pb2 as S
from trainer_service.jobs.failure import MAX_ERROR_CHARS, job_error, last_exception
from trainer_service.jobs.layout import INIT_FROM_DIR, LOG_FILE

LATEST = common_pb2.CHECKPOINT_KIND_LATEST


async def latest_sha256(trainer: Trainer, job_id: str) -> str:
    listed = await trainer.stub.ListCheckpoints(S.ListCheckpointsRequest(job_id=job_id))
    return next(c.weights_sha256 for c in listed.checkpoints if c.kind == LATEST)


async def test_a_finetune_of_a_running_job_starts_from_the_checkpoint_it_was_created_with(trainer: Trainer) -> None:
    """The parent keeps training (replacing `latest` every 2 steps) while the child waits in the queue; the child
    still starts, from its own copy of the version it was created with, which its lineage names."""
    corpus = (await trainer.upload(sample_text(2000))).corpus
    parent = await trainer.create_job(corpus.corpus_id, max_steps=40, checkpoint_interval=2)
    await trainer.wait_for(parent.job_id, [S.JOB_STATE_RUNNING], min_step=4)
    child = (await trainer.stub.CreateTrainingJob(finetune(corpus.corpus_id, S.InitFrom(job_id=parent.job_id,
                                                                                         kind=LATEST)))).job
    assert child.state == S.JOB_STATE_QUEUED and child.parent.step > 0  # one job per device: it waits
    await trainer.wait_for(parent.job_id, [S.JOB_STATE_SUCCEEDED])
    assert await latest_sha256(trainer, parent.job_id) != child.parent.weights_sha256  # the parent moved on
    done = await trainer.wait_for(child.job_id, [S.JOB_STATE_SUCCEEDED])
    assert done.parent == child.parent
    copy = trainer.data_dir / "jobs" / child.job_id / INIT_FROM_DIR
    assert sorted(p.name for p in copy.iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]
    assert read_manifest(copy).weights.sha256 == file_sha256(copy / WEIGHTS_FILE) == child.parent.weights_sha256
    assert read_manifest(copy).training.step == child.parent.step


async def test_a_parent_copy_damaged_before_the_start_fails_with_the_reason_first(trainer: Trainer) -> None:
    """The worker refuses a parent whose weights no longer match; the job's error is that reason, not a
    traceback (which stays in worker.log)."""
    corpus = (await trainer.upload(sample_text(2000))).corpus
    parent = await trainer.wait_for((await trainer.create_job(corpus.corpus_id, max_steps=5)).job_id,
                                    [S.JOB_STATE_SUCCEEDED])
    blocker = await trainer.create_job(corpus.corpus_id, max_steps=100_000)
    child = (await trainer.stub.CreateTrainingJob(finetune(corpus.corpus_id, S.InitFrom(job_id=parent.job_id)))).job
    job_dir = trainer.data_dir / "jobs" / child.job_id
    weights = job_dir / INIT_FROM_DIR / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=blocker.job_id))
    failed = await trainer.wait_for(child.job_id, [S.JOB_STATE_FAILED])
    assert failed.error.startswith("init_from: the parent checkpoint is damaged"), failed.error
    assert failed.error.endswith(f"(worker exited with code 1; traceback in {LOG_FILE})"), failed.error
    assert "Traceback" not in failed.error and "\n" not in failed.error
    assert "Traceback (most recent call last)" in (job_dir / LOG_FILE).read_text()


def test_a_traceback_printed_before_the_reason_was_recorded_yields_its_exception_line() -> None:
    try:
        try:
            {}["missing"]  # a real chained exception
        except KeyError as exc:
            raise ImportError("cannot import name 'run_training'\nfrom 'engine'") from exc
    except ImportError as exc:
        printed = "==== worker start\nloading\n" + "".join(traceback.format_exception(exc))
    assert last_exception(printed) == "ImportError: cannot import name 'run_training'"
    assert last_exception("step 5\nworker: stopping (signal SIGTERM)\n") is None


def test_a_jobs_error_is_one_bounded_line() -> None:
    assert job_error("bad\n  thing", "worker exited with code 1") == "bad thing (worker exited with code 1)"
    assert job_error(None, "worker was killed by signal SIGKILL") == "worker was killed by signal SIGKILL"
    assert len(job_error("x" * 5000, "how")) == MAX_ERROR_CHARS
