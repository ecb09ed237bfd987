"""Trainer settings: flags or CHARGPT_TRAINER_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from chargpt.server.settings import ServerSettings


class TrainerSettings(ServerSettings):
    """chargpt trainer service."""

    model_config = SettingsConfigDict(env_prefix="CHARGPT_TRAINER_")

    port: int = Field(default=50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    data_dir: Path = Field(default=Path("./chargpt-data/trainer"),
                           description="corpora, jobs database and checkpoints live here")
    device: str = Field(default="auto", description="default training device: auto, cpu, cuda, cuda:N, mps")
