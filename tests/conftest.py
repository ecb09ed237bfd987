"""Shared fixtures: tiny model configs and checkpoints that keep tests fast."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.support.skip_policy"]

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
    from tests.support.calibration import prefill

    directory = prefill(tmp_path_factory.mktemp("calibration"))
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
