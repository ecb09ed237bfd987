"""The soak benchmark in short: mixed traffic against real service processes while the trainer trains, 0 errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import MIX, run_soak


@pytest.mark.slow
async def test_short_soak_has_no_errors(tmp_path: Path) -> None:
    report = await run_soak(seconds=10, concurrency=6, workdir=tmp_path)
    kinds = report["kinds"]
    assert report["errors"] == 0, kinds
    assert all(kinds[kind]["ok"] > 0 for kind in [*MIX, "trainer_poll"]), kinds
    assert report["exit_codes"] == {"inference": 0, "trainer": 0}
    assert report["training"]["steps_during_soak"] > 0 and report["training"]["events_watched"] > 0
