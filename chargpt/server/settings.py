"""Settings common to both services (read once at start-up from flags and environment, then passed down)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from pydantic import Field, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings


class ServerSettings(BaseSettings):
    """Network, security and shutdown settings; each service subclasses it with its own prefix."""

    host: str = Field(default="127.0.0.1", description="interface to listen on (0.0.0.0 in containers)")
    port: int = Field(default=0, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_port: int | None = Field(default=None, ge=0, le=65535,
                                     description="Prometheus /metrics HTTP port; unset disables it")
    metrics_host: str | None = Field(default=None, description="interface for /metrics; default: host")
    auth_token: str | None = Field(default=None, description="require `authorization: Bearer <token>`; with a keys "
                                   "file too, this token is one more admin key (tenant `default`)")
    keys_file: Path | None = Field(default=None, description="multi-tenant API keys (hashed; `chargpt-admin keys "
                                   "create`), re-read when it changes; unset with no auth_token: single-user, open")
    tenants_file: Path | None = Field(default=None, description="per-tenant quotas and limits (TOML: [defaults] and "
                                      "[tenants.<name>]); unset: no quotas")
    audit_log: Path | None = Field(default=None, description="append who created, deleted, downloaded, exported or "
                                   "loaded what, as JSON lines; unset: no audit trail")
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = Field(default=None, description="require client certs (mutual TLS)")
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    log_level: str = "INFO"

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, **overrides: Any) -> Self:
        """Flags override environment variables, which override defaults."""
        parser = argparse.ArgumentParser(description=cls.__doc__)
        for name, field in cls.model_fields.items():
            flag = "--" + name.replace("_", "-")
            # argparse %-formats help strings: a literal % in a description must be doubled
            parser.add_argument(flag, dest=name, default=None,
                                help=field.description.replace("%", "%%") if field.description else None)
        given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
        try:
            return cls(**{**given, **overrides})
        except ValidationError as exc:  # a usage error naming the flag and its variable, not a traceback
            parser.error("; ".join(_describe(error, str(cls.model_config.get("env_prefix", "")))
                                   for error in exc.errors()))


def _describe(error: ErrorDetails, env_prefix: str) -> str:
    """`--stream-interval-ms` (or CHARGPT_INFERENCE_STREAM_INTERVAL_MS): input should be ... (got '-1')."""
    name = str(error["loc"][0]) if error["loc"] else ""
    where = f"--{name.replace('_', '-')} (or {env_prefix}{name.upper()})" if name else "settings"
    return f"{where}: {error['msg'].lower()} (got {error.get('input')!r})"
