"""Trainer settings: flags or CHARGPT_TRAINER_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from chargpt.server.settings import ServerSettings

DEFAULT_ENGINE = "trainer_service.training.loop:run_training"


class TrainerSettings(ServerSettings):
    """chargpt trainer service."""

    model_config = SettingsConfigDict(env_prefix="CHARGPT_TRAINER_")

    port: int = Field(default=50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    data_dir: Path = Field(default=Path("./chargpt-data/trainer"),
                           description="corpora, jobs database and checkpoints live here")
    device: str = Field(default="auto", description="default training device: auto, cpu, cuda, cuda:N, mps")
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1,
                                  description="largest corpus upload in bytes (default 100 MB)")
    max_jobs_per_device: int = Field(default=1, ge=1, description="training jobs running at once per device")
    max_processes_per_job: int = Field(default=64, ge=1, description="upper bound for resources.num_processes")
    worker_stop_timeout_seconds: float = Field(
        default=60.0, gt=0, description="after SIGTERM, how long a worker may take to checkpoint before SIGKILL")
    event_poll_seconds: float = Field(default=0.25, gt=0,
                                      description="how often worker-written events are picked up")
    builtin_corpora: bool = Field(default=True, description="materialise the built-in corpora at start-up")
    engine: str = Field(default=DEFAULT_ENGINE,
                        description="module:function the worker trains with (tests inject a fake engine)")
    calibration_dir: Path | None = Field(default=None, description="where this host's measured fp32/bf16 "
                                         "timings are cached (precision and size auto); default: DATA_DIR/calibration")
    recalibrate: bool = Field(default=False, description="forget the cached timings at start-up and measure again")
    worker_python: str | None = Field(default=None, description="interpreter for workers; default: this one")

    def resolved_calibration_dir(self) -> Path:
        return self.calibration_dir or self.data_dir / "calibration"
