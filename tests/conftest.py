"""Shared fixtures: tiny model configs and checkpoints that keep tests fast."""

from __future__ import annotations

import os
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


@pytest.fixture
def shakespeare_text() -> str:
    """The standard benchmark corpus from ../shared/data (never committed); skipped if absent."""
    path = Path(os.environ.get("CHARGPT_SHAKESPEARE", SHAKESPEARE))
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path.read_text(encoding="utf-8")
