"""Shared fixtures: tiny model configs and checkpoints that keep tests fast."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


CALIBRATION_ENVS = ("CHARGPT_CALIBRATION_DIR", "CHARGPT_TRAINER_CALIBRATION_DIR", "CHARGPT_INFERENCE_CALIBRATION_DIR")


@pytest.fixture(scope="session", autouse=True)
def calibration_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One calibration cache for the whole run, pre-filled with fixed figures for the host's GEMM peak and the CPU
    size candidates (timing those real shapes takes seconds on a loaded machine); tiny test models are measured
    for real, once per shape per run. Tests of the calibration itself use their own directories."""
    from chargpt.core.calibrated import CPU_CANDIDATES, profile_config
    from chargpt.core.calibration import Calibrator, GemmPeak, Timing, TrainStep, train_entry

    directory = tmp_path_factory.mktemp("calibration")
    calibrator = Calibrator(directory)

    def timing(seconds: float) -> Timing:
        return Timing(best_s=seconds, median_s=seconds, spread=0.0, trials=3)

    calibrator.put("gemm", GemmPeak(gflops_fp32=100.0, gflops_bf16=50.0, fp32=timing(0.02), bf16=timing(0.04)))
    for profile in CPU_CANDIDATES:  # fp32 at 20k tokens/s and bf16 slower: auto keeps the CPU preset in fp32
        tokens = profile.batch_size * profile.block_size
        calibrator.put(train_entry(profile_config(profile), profile.batch_size),
                       TrainStep(tokens=tokens, threads=1, fp32=timing(tokens / 20_000), bf16=timing(tokens / 10_000)))
    with pytest.MonkeyPatch.context() as patch:
        for name in CALIBRATION_ENVS:
            patch.setenv(name, str(directory))
        # Serving tests compare batched with alone token for token, which holds in float32; dtype auto may pick
        # bfloat16 on a host where it measures faster (tests/inference_service/test_calibration.py covers auto).
        patch.setenv("CHARGPT_INFERENCE_DTYPE", "float32")
        yield directory


@pytest.fixture
def shakespeare_text() -> str:
    """The standard benchmark corpus from ../shared/data (never committed); skipped if absent."""
    path = Path(os.environ.get("CHARGPT_SHAKESPEARE", SHAKESPEARE))
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path.read_text(encoding="utf-8")
