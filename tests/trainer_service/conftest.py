"""Fixtures for trainer-service tests; the helpers live in trainer_harness.py (on sys.path for workers too)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from trainer_harness import Trainer  # noqa: E402


@pytest.fixture
def fake_engine_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Workers find the fake engine on PYTHONPATH; steps take 50 ms unless a test changes the pace."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("FAKE_ENGINE_STEP_SECONDS", "0.05")
    monkeypatch.delenv("FAKE_ENGINE_FAIL_AT", raising=False)
    return monkeypatch


@pytest.fixture
async def trainer(tmp_path: Path, fake_engine_env: pytest.MonkeyPatch) -> AsyncIterator[Trainer]:
    t = Trainer(tmp_path / "data")
    await t.start()
    yield t
    await t.stop()
