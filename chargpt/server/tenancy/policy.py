"""Per-tenant quotas and limits: defaults plus overrides from a TOML tenants file, re-read when it changes.

    [defaults]
    running_jobs = 1
    queued_jobs = 10
    [tenants.acme]
    running_jobs = 4

Unset limits are unlimited; with no tenants file nothing is limited (single-user deployments).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chargpt.errors import InvalidArgumentError, QuotaExceededError
from chargpt.server.tenancy.keys import validate_tenant
from chargpt.server.tenancy.watched_file import WatchedFile


class TenantLimits(BaseModel):
    """One tenant's quotas (trainer) and rate limits (inference); None means unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    running_jobs: int | None = Field(default=None, ge=0, description="training jobs running at once")
    queued_jobs: int | None = Field(default=None, ge=0, description="training jobs waiting to run")
    corpus_bytes: int | None = Field(default=None, ge=0, description="bytes of uploaded corpora stored")
    training_seconds_per_day: float | None = Field(default=None, ge=0,
                                                   description="training wall seconds started in the last 24 h")
    loaded_models: int | None = Field(default=None, ge=0, description="models loaded for inference")
    generated_chars_per_minute: int | None = Field(default=None, ge=0,
                                                   description="characters generated per key per minute")
    concurrent_streams: int | None = Field(default=None, ge=0, description="generations in flight per key")

    def check(self, tenant: str, quota: str, used: float, adding: float = 1) -> None:
        """QuotaExceededError naming `quota` if `used + adding` would exceed it (nothing is created)."""
        limit = getattr(self, quota)
        if limit is not None and used + adding > limit:
            raise QuotaExceededError(tenant, quota, f"{_amount(used)} used of {_amount(limit)}, "
                                                    f"this request needs {_amount(adding)} more")


def _amount(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


class TenantsConfig(BaseModel):
    """The tenants file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: TenantLimits = TenantLimits()
    tenants: dict[str, dict[str, Any]] = {}

    def limits(self, tenant: str) -> TenantLimits:
        override = self.tenants.get(tenant)
        if not override:
            return self.defaults
        # Validated, not model_copy(update=...): that would keep a TOML "4" a string, and check() would then fail.
        return TenantLimits.model_validate({**self.defaults.model_dump(), **override})


def read_tenants_file(path: Path) -> TenantsConfig:
    """Parse and validate a tenants file (ValueError naming the bad key otherwise)."""
    try:
        config = TenantsConfig.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
        for name, override in config.tenants.items():
            validate_tenant(name)
            TenantLimits.model_validate({**config.defaults.model_dump(), **override})
    except (tomllib.TOMLDecodeError, ValidationError, InvalidArgumentError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    return config


class TenantPolicy:
    """The limits that apply to each tenant now."""

    def __init__(self, path: Path | None, reload_seconds: float = 1.0) -> None:
        self._file = WatchedFile(path, read_tenants_file, reload_seconds) if path is not None else None

    def limits(self, tenant: str) -> TenantLimits:
        return self._file.value().limits(tenant) if self._file is not None else TenantLimits()
