"""Trainer settings from flags and environment; device info over gRPC."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from trainer_harness import Trainer

from chargpt.core.config import ModelConfig
from chargpt.core.device import SIZE_PROFILES
from chargpt.v1 import trainer_pb2 as S
from tests.support.calibration import FP32_TOKENS_PER_SECOND, GEMM_BF16, GEMM_FP32, prefill
from trainer_service.jobs.layout import PLAN_FILE
from trainer_service.server import create_server
from trainer_service.settings import TrainerSettings
from trainer_service.training.api import TrainingPlan


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARGPT_TRAINER_MAX_JOBS_PER_DEVICE", "3")
    monkeypatch.setenv("CHARGPT_TRAINER_MAX_UPLOAD_BYTES", "2048")
    settings = TrainerSettings.from_args(["--max-upload-bytes", "4096", "--data-dir", "/tmp/x"])
    assert (settings.max_jobs_per_device, settings.max_upload_bytes) == (3, 4096)
    assert TrainerSettings().max_upload_bytes == 2048
    monkeypatch.delenv("CHARGPT_TRAINER_MAX_UPLOAD_BYTES")
    assert TrainerSettings().max_upload_bytes == 100 * 1024 * 1024
    with pytest.raises(ValueError, match="max_jobs_per_device"):
        TrainerSettings(max_jobs_per_device=0)
    monkeypatch.setenv("CHARGPT_TRAINER_TENSORBOARD", "false")
    assert not TrainerSettings().tensorboard and TrainerSettings.from_args(["--tensorboard", "true"]).tensorboard


@pytest.mark.parametrize(("enabled", "run"), [(True, "Pigs-on-a-trip"), (False, None)])
async def test_the_tensorboard_setting_names_each_jobs_run(tmp_path: Path, fake_engine_env: pytest.MonkeyPatch,
                                                            enabled: bool, run: str | None) -> None:
    t = Trainer(tmp_path / "data", tensorboard=enabled)
    await t.start()
    try:
        corpus = (await t.upload("pigs went to market " * 100)).corpus
        job = await t.create_job(corpus.corpus_id, display_name="Pigs on a trip!")
        plan_json = (t.data_dir / "jobs" / job.job_id / PLAN_FILE).read_text(encoding="utf-8")
        assert TrainingPlan.model_validate_json(plan_json).tensorboard_run == run
    finally:
        await t.stop()


async def test_device_info(trainer: Trainer) -> None:
    info = await trainer.stub.GetDeviceInfo(S.GetDeviceInfoRequest())
    assert info.device.type == "cpu" and info.device.cpu_cores >= 1
    assert list(info.presets) == list(SIZE_PROFILES)
    cpu = SIZE_PROFILES["cpu"]
    assert info.auto_model.n_embd == cpu.n_embd and info.auto_batch_size == cpu.batch_size


async def test_device_info_shows_the_measured_figures_and_choices(tmp_path: Path,
                                                                 fake_engine_env: pytest.MonkeyPatch) -> None:
    """A calibration cache holding fixed figures (tests/support/calibration.py: fp32 20k tokens/s at every CPU
    candidate, bf16 half that, GEMM 100/50 GFLOP/s); the report shows them and the choices they lead to."""
    trainer = Trainer(tmp_path / "data", calibration_dir=prefill(tmp_path / "calibration"))
    await trainer.start()
    try:
        info = await trainer.stub.GetDeviceInfo(S.GetDeviceInfoRequest())
    finally:
        await trainer.stop()
    assert (info.gemm_gflops_fp32, info.gemm_gflops_bf16) == (GEMM_FP32, GEMM_BF16)
    assert info.auto_precision == "fp32"  # bf16 measured slower, whatever the CPU flags say
    assert dict(info.candidate_tokens_per_second) == {"cpu": FP32_TOKENS_PER_SECOND}  # below target: none wider
    assert info.calibrated_time.seconds > 0


async def test_one_server_per_data_directory(trainer: Trainer) -> None:
    with pytest.raises(RuntimeError, match="another trainer server"):
        await create_server(trainer.settings())


async def test_device_info_answers_at_once_while_the_host_is_measured(tmp_path: Path,
                                                                     fake_engine_env: pytest.MonkeyPatch) -> None:
    """On an empty calibration directory GetDeviceInfo ran the host's measurement inside the RPC (over 60 s on a
    busy host): it now answers with the table's defaults, saying PENDING, while the measurement (held here on an
    event, so the test does not depend on the host's speed) runs from start-up; then the measured figures."""
    from chargpt_client import AsyncTrainerClient, ClientOptions

    from chargpt.core import calibration, measurements

    release = threading.Event()

    def timing(seconds: float) -> measurements.Timing:
        return measurements.Timing(best_s=seconds, median_s=seconds, spread=0.0, trials=3)

    def held_gemm(*args: object, **kwargs: object) -> measurements.GemmPeak:
        release.wait(60)
        return measurements.GemmPeak(gflops_fp32=GEMM_FP32, gflops_bf16=GEMM_BF16, fp32=timing(0.02),
                                     bf16=timing(0.04))

    def fixed_step(config: ModelConfig, batch: int, *args: object) -> measurements.TrainStep:
        tokens = batch * config.block_size  # fp32 at FP32_TOKENS_PER_SECOND, bf16 at half that
        return measurements.TrainStep(tokens=tokens, threads=1, fp32=timing(tokens / FP32_TOKENS_PER_SECOND),
                                      bf16=timing(2 * tokens / FP32_TOKENS_PER_SECOND))

    fake_engine_env.setattr(calibration, "measure_gemm_peak", held_gemm)
    fake_engine_env.setattr(calibration, "measure_train_step", fixed_step)
    trainer = Trainer(tmp_path / "data", calibration_dir=tmp_path / "empty")
    await trainer.start()
    try:
        async with AsyncTrainerClient(f"127.0.0.1:{trainer.port}", ClientOptions(timeout=5.0)) as client:
            pending = await client.device_info()  # DEADLINE_EXCEEDED before: the RPC measured
            assert pending.calibration == "pending" and pending.auto_preset == "cpu"
            assert pending.auto_precision == "fp32" and pending.gemm_gflops_fp32 == 0
            release.set()
            deadline = time.monotonic() + 30
            while (report := await client.device_info()).calibration == "pending":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert report.calibration == "measured" and report.gemm_gflops_fp32 == GEMM_FP32
            assert report.candidate_tokens_per_second == {"cpu": FP32_TOKENS_PER_SECOND}
            release.clear()
            again = await client.device_info(recalibrate=True)  # measures again, in the background
            assert again.calibration == "pending" and again.gemm_gflops_fp32 == 0
            release.set()
    finally:
        release.set()
        await trainer.stop()
