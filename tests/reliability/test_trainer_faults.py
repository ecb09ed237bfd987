"""Trainer faults: the whole process tree SIGKILLed mid-training, full disks during uploads and checkpoints."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from chargpt.core.checkpoint import load_checkpoint, read_manifest
from chargpt.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from tests.support.disk import small_tmpfs
from tests.support.procs import free_port, processes_mentioning, start_service, stop, wait_serving
from trainer_service.server import create_server
from trainer_service.settings import DEFAULT_ENGINE, TrainerSettings

S = trainer_pb2
TERMINAL = {S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED}
TEXT = ("It was the best of times, it was the worst of times; naïve café 日本 🙂\n" * 60)


def tiny_job(corpus_id: str, max_steps: int, checkpoint_interval: int = 4) -> S.CreateTrainingJobRequest:
    return S.CreateTrainingJobRequest(
        corpus_id=corpus_id,
        model=S.ModelSpec(custom=common_pb2.ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)),
        training=S.TrainingSpec(max_steps=max_steps, batch_size=4, eval_interval=10, sample_interval=0,
                                checkpoint_interval=checkpoint_interval, warmup_steps=0),
        resources=S.ResourceSpec(device="cpu"))


async def upload(stub: trainer_pb2_grpc.TrainerServiceStub, data: bytes, name: str = "corpus",
                 chunk: int = 64 * 1024) -> S.UploadCorpusResponse:
    async def messages() -> AsyncIterator[S.UploadCorpusRequest]:
        yield S.UploadCorpusRequest(header=S.CorpusHeader(name=name))
        for i in range(0, len(data), chunk):
            yield S.UploadCorpusRequest(data=data[i:i + chunk])
    reply: S.UploadCorpusResponse = await stub.UploadCorpus(messages(), timeout=60)
    return reply


async def wait_job(stub: trainer_pb2_grpc.TrainerServiceStub, job_id: str, states: set[int], timeout: float,
                   min_step: int = 0) -> S.TrainingJob:
    deadline = time.monotonic() + timeout
    while True:
        job: S.TrainingJob = (await stub.GetTrainingJob(S.GetTrainingJobRequest(job_id=job_id), timeout=10)).job
        if job.state in states and job.step >= min_step:
            return job
        assert time.monotonic() < deadline and (job.state not in TERMINAL or job.state in states), \
            f"job {S.JobState.Name(job.state)} at step {job.step}: {job.error}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker")
async def test_power_cut_kills_server_and_worker_and_nothing_is_lost(tmp_path: Path) -> None:
    """SIGKILL the server and its worker together (no chance to checkpoint): the restarted server resumes the job
    from its last periodic checkpoint and finishes at max_steps; corpora, checkpoints and events survive."""
    data, log, port = tmp_path / "data", tmp_path / "server.log", free_port()
    args = ["--port", str(port), "--data-dir", str(data), "--device", "cpu", "--builtin-corpora", "false",
            "--engine", DEFAULT_ENGINE, "--event-poll-seconds", "0.1"]
    server = start_service("trainer_service.server", args, log)
    try:
        await wait_serving(port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            corpora = [(await upload(stub, TEXT.encode() + bytes([65 + i]) * 10, f"c{i}")).corpus for i in range(3)]
            job = (await stub.CreateTrainingJob(tiny_job(corpora[0].corpus_id, max_steps=40), timeout=30)).job
            await wait_job(stub, job.job_id, {S.JOB_STATE_RUNNING}, timeout=120, min_step=10)
        workers = processes_mentioning(job.job_id)
        assert workers, "no worker process found"
        server.send_signal(signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.wait(10)
        checkpoint_step = read_manifest(data / "jobs" / job.job_id / "checkpoints" / "latest").training.step

        server = start_service("trainer_service.server", args, log)
        await wait_serving(port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            done = await wait_job(stub, job.job_id, {S.JOB_STATE_SUCCEEDED}, timeout=180)
            assert done.step == 40
            listed = {c.corpus_id for c in (await stub.ListCorpora(S.ListCorporaRequest(), timeout=10)).corpora}
            assert listed == {c.corpus_id for c in corpora}
            events = [e async for e in stub.WatchTrainingJob(S.WatchTrainingJobRequest(job_id=job.job_id),
                                                             timeout=30)]
            checkpoints = (await stub.ListCheckpoints(S.ListCheckpointsRequest(job_id=job.job_id), timeout=10))
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))  # contiguous, nothing lost
        running = [i for i, e in enumerate(events) if e.HasField("state_changed")
                   and e.state_changed.state == S.JOB_STATE_RUNNING]
        assert len(running) == 2
        resumed = events[running[-1]].state_changed.message
        assert f"resuming from step {checkpoint_step}" in resumed, resumed
        # progress (reported every few steps) continues from the checkpoint, strictly forward, to the end
        steps = [e.progress.step for e in events[running[-1]:] if e.HasField("progress")]
        assert steps and steps[0] > checkpoint_step and steps[-1] == 40 and steps == sorted(set(steps))
        assert {c.kind for c in checkpoints.checkpoints} == {common_pb2.CHECKPOINT_KIND_LATEST,
                                                             common_pb2.CHECKPOINT_KIND_BEST}
        latest = load_checkpoint(data / "jobs" / job.job_id / "checkpoints" / "latest")
        assert latest.manifest.training.step == 40
        assert not [p for p in (data / "corpora").iterdir() if p.name.startswith(".upload-")]
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    finally:
        stop(server)
        print(log.read_text(errors="replace")[-3000:])


# ---- full disks

@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "2m") as mounted:
        if mounted is None:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        yield mounted


async def _trainer(data_dir: Path) -> tuple[object, trainer_pb2_grpc.TrainerServiceStub, grpc.aio.Channel]:
    server, port = await create_server(TrainerSettings(port=0, data_dir=data_dir, device="cpu",
                                                       builtin_corpora=False, event_poll_seconds=0.1))
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return server, trainer_pb2_grpc.TrainerServiceStub(channel), channel


async def test_full_disk_during_upload_stores_nothing_and_the_server_carries_on(full_disk: Path) -> None:
    server, stub, channel = await _trainer(full_disk / "data")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await upload(stub, TEXT.encode() * 600, "too-big")  # ~3 MB onto a 2 MB disk
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "No space left on device" in (err.value.details() or "")
        assert list((full_disk / "data" / "corpora").iterdir()) == []  # the partial temp file is gone
        assert (await stub.ListCorpora(S.ListCorporaRequest(), timeout=10)).corpora == []
        small = await upload(stub, TEXT.encode(), "fits")
        assert small.created
        listed = (await stub.ListCorpora(S.ListCorporaRequest(), timeout=10)).corpora
        assert [c.name for c in listed] == ["fits"]
    finally:
        await channel.close()
        await server.stop(0)  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_full_disk_during_checkpoint_fails_the_job_cleanly(tmp_path: Path) -> None:
    """Job directories on a 192 KiB disk: the first checkpoint cannot be written, so the job FAILS with the
    reason, no half-written checkpoint is visible, the server keeps answering; with room again it resumes."""
    data = tmp_path / "data"
    with small_tmpfs(data / "jobs", "192k") as jobs_disk:
        if jobs_disk is None:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        server, stub, channel = await _trainer(data)
        try:
            corpus = (await upload(stub, TEXT.encode(), "c")).corpus
            request = tiny_job(corpus.corpus_id, max_steps=8, checkpoint_interval=4)
            request.model.custom.n_embd = 64  # ~0.2 MB of weights, plus the optimizer state
            job = (await stub.CreateTrainingJob(request, timeout=30)).job
            failed = await wait_job(stub, job.job_id, {S.JOB_STATE_FAILED}, timeout=120)
            assert "No space left on device" in failed.error, failed.error
            checkpoints = jobs_disk / job.job_id / "checkpoints"
            assert not [p for p in checkpoints.rglob("*") if ".tmp-" in p.name]
            listed = await stub.ListCheckpoints(S.ListCheckpointsRequest(job_id=job.job_id), timeout=10)
            assert list(listed.checkpoints) == []
            assert (await stub.ListCorpora(S.ListCorporaRequest(), timeout=10)).corpora[0].corpus_id \
                == corpus.corpus_id
            subprocess.run(["mount", "-o", "remount,size=16m", str(jobs_disk)], check=True, timeout=30)
            await stub.ResumeTrainingJob(S.ResumeTrainingJobRequest(job_id=job.job_id), timeout=10)
            assert (await wait_job(stub, job.job_id, {S.JOB_STATE_SUCCEEDED}, timeout=120)).step == 8
        finally:
            await channel.close()
            await server.stop(0)  # type: ignore[attr-defined]


def test_enospc_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a tmpfs: os-level ENOSPC injected between the weights and the manifest."""
    from chargpt.core import checkpoint
    from tests.inference_service.conftest import write_checkpoint

    path = write_checkpoint(tmp_path / "latest", seed=1)
    before = read_manifest(path).weights.sha256
    real = Path.write_text

    def no_space(self: Path, *args: object, **kwargs: object) -> int:
        if self.name == checkpoint.MANIFEST_FILE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(OSError, match="No space"):
        write_checkpoint(tmp_path / "latest", seed=2)
    monkeypatch.undo()
    assert load_checkpoint(path).manifest.weights.sha256 == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


@pytest.mark.slow
async def test_a_killed_worker_fails_only_its_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two jobs train side by side; SIGKILL one worker: that job FAILS naming the signal, the other finishes."""
    fake_engine_dir = Path(__file__).resolve().parents[1] / "trainer_service"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(fake_engine_dir),
                                                                   os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("FAKE_ENGINE_STEP_SECONDS", "0.05")
    settings = TrainerSettings(port=0, data_dir=tmp_path / "data", device="cpu", builtin_corpora=False,
                               event_poll_seconds=0.1, engine="fake_engine:run_training", max_jobs_per_device=2)
    server, port = await create_server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            corpus = (await upload(stub, TEXT.encode())).corpus
            victim = (await stub.CreateTrainingJob(tiny_job(corpus.corpus_id, max_steps=100_000), timeout=30)).job
            other = (await stub.CreateTrainingJob(tiny_job(corpus.corpus_id, max_steps=60), timeout=30)).job
            for job in (victim, other):
                await wait_job(stub, job.job_id, {S.JOB_STATE_RUNNING}, timeout=90, min_step=3)
            workers = processes_mentioning(victim.job_id)  # the job's worker process: its --job-dir names the job
            assert workers
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            failed = await wait_job(stub, victim.job_id, {S.JOB_STATE_FAILED}, timeout=30)
            assert "SIGKILL" in failed.error
            assert (await wait_job(stub, other.job_id, {S.JOB_STATE_SUCCEEDED}, timeout=120)).step == 60
            assert (await stub.ListCorpora(S.ListCorporaRequest(), timeout=10)).corpora[0].corpus_id \
                == corpus.corpus_id
    finally:
        await server.stop(0)
