"""The images' entry points, run as the containers would (no Docker engine here): healthy, then clean on SIGTERM."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.tools import imagerun
from deploy.tools.dockerfile import stages

DOCKERFILE = imagerun.REPO / "deploy" / "docker" / "Dockerfile"
PREFIX = {"trainer": "CHARGPT_TRAINER_", "inference": "CHARGPT_INFERENCE_"}


def test_health_probe_fails_when_nothing_listens() -> None:
    stage = stages(DOCKERFILE)["trainer"]
    env = imagerun.image_environment(stage, Path("/nonexistent"), {"CHARGPT_TRAINER_PORT": str(imagerun.free_port())})
    result = imagerun.healthcheck(stage, env)
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr


@pytest.mark.slow
def test_both_images_start_report_serving_and_stop_cleanly_on_sigterm(tmp_path: Path) -> None:
    """Both services at once (they start in parallel), exactly as each image's ENTRYPOINT/ENV/HEALTHCHECK says."""
    running = {}
    try:
        for target, prefix in PREFIX.items():
            stage = stages(DOCKERFILE)[target]
            env = imagerun.image_environment(stage, tmp_path / "data", {
                prefix + "PORT": str(imagerun.free_port()), prefix + "METRICS_PORT": str(imagerun.free_port()),
                prefix + "SHUTDOWN_GRACE_SECONDS": "5"})
            (tmp_path / target).mkdir()
            running[target] = (stage, env, imagerun.start(stage, env, tmp_path / target / "log.txt"))
        for stage, env, process in running.values():
            imagerun.wait_healthy(stage, env, process, timeout=90)
        for target, (_, _, process) in running.items():
            assert imagerun.stop(process, timeout=30) == 0, (tmp_path / target / "log.txt").read_text()[-3000:]
    finally:
        for _, _, process in running.values():
            imagerun.stop(process, timeout=5)
