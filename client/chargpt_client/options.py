"""Connection options shared by every client: addresses, deadlines, retries, TLS, bearer token, load balancing."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

DEFAULT_TRAINER_ADDRESS = "127.0.0.1:50051"
DEFAULT_INFERENCE_ADDRESS = "127.0.0.1:50052"
TRAINER_ADDRESS_ENV = "CHARGPT_TRAINER_ADDRESS"
INFERENCE_ADDRESS_ENV = "CHARGPT_INFERENCE_ADDRESS"
TOKEN_ENV = "CHARGPT_TOKEN"
API_KEY_ENV = "CHARGPT_API_KEY"  # the same bearer credential, named as a tenant's key (`chargpt-admin keys create`)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # attention dumps of big models are several MiB


def trainer_address(address: str | None = None) -> str:
    """The argument, else $CHARGPT_TRAINER_ADDRESS, else 127.0.0.1:50051."""
    return address or os.environ.get(TRAINER_ADDRESS_ENV) or DEFAULT_TRAINER_ADDRESS


def inference_address(address: str | None = None) -> str:
    """The argument, else $CHARGPT_INFERENCE_ADDRESS, else 127.0.0.1:50052."""
    return address or os.environ.get(INFERENCE_ADDRESS_ENV) or DEFAULT_INFERENCE_ADDRESS


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, for UNAVAILABLE on calls that are safe to repeat."""

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        """Sleeps before attempts 2..max_attempts: uniform in [0, min(max, initial * multiplier**n)]."""
        for n in range(self.max_attempts - 1):
            yield random.uniform(0.5, 1.0) * min(self.max_backoff, self.initial_backoff * self.multiplier**n)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class TlsOptions:
    """Server verification (root_certificates, PEM) and, for mutual TLS, a client certificate and key."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name_override: str | None = None

    @classmethod
    def from_files(cls, root_certificates: str | Path | None = None, certificate_chain: str | Path | None = None,
                   private_key: str | Path | None = None, server_name_override: str | None = None) -> TlsOptions:
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        if bool(certificate_chain) != bool(private_key):
            raise ValueError("mutual TLS needs both a client certificate and its private key")
        return cls(read(root_certificates), read(certificate_chain), read(private_key), server_name_override)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


@dataclass(frozen=True)
class ClientOptions:
    """How to reach a service. `timeout` is each call's default deadline in seconds (None: no deadline)."""

    timeout: float | None = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    token: str | None = None
    tls: TlsOptions | None = None
    round_robin: bool = False  # spread calls over every address a dns:/// (or ipv4:a,b) target resolves to
    channel_options: tuple[tuple[str, str | int], ...] = ()

    @classmethod
    def from_env(cls, **overrides: object) -> ClientOptions:
        """Options with the token from $CHARGPT_TOKEN (else $CHARGPT_API_KEY) unless given."""
        if overrides.get("token") is None:
            overrides["token"] = os.environ.get(TOKEN_ENV) or os.environ.get(API_KEY_ENV) or None
        return cls(**overrides)  # type: ignore[arg-type]

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def grpc_options(self) -> list[tuple[str, str | int]]:
        options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Reconnect quickly, so a retry after a restart does not wait out gRPC's default 1-120 s backoff.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if self.round_robin:
            options.append(("grpc.lb_policy_name", "round_robin"))
            options.append(("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})))
        if self.tls and self.tls.server_name_override:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name_override))
        return [*options, *self.channel_options]


def sync_channel(address: str, options: ClientOptions) -> grpc.Channel:
    if options.tls is not None:
        return grpc.secure_channel(address, options.tls.credentials(), options.grpc_options())
    return grpc.insecure_channel(address, options.grpc_options())


def aio_channel(address: str, options: ClientOptions) -> grpc.aio.Channel:
    if options.tls is not None:
        return grpc.aio.secure_channel(address, options.tls.credentials(), options.grpc_options())
    return grpc.aio.insecure_channel(address, options.grpc_options())
