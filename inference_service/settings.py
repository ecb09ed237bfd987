"""Inference settings: flags or CHARGPT_INFERENCE_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from chargpt.server.settings import ServerSettings


class InferenceSettings(ServerSettings):
    """chargpt inference service."""

    model_config = SettingsConfigDict(env_prefix="CHARGPT_INFERENCE_")

    port: int = Field(default=50052, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    models_dir: Path = Field(default=Path("./chargpt-data/models"),
                             description="root of loadable checkpoint directories")
    trainer_address: str | None = Field(default=None,
                                        description="trainer host:port for loading a job's checkpoint")
    device: str = Field(default="auto", description="default device for models: auto, cpu, cuda, cuda:N, mps")
