"""Each RPC's tenancy scope, declared beside its service: a test fails when an RPC has none."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from google.protobuf.descriptor import ServiceDescriptor


class Scope(StrEnum):
    """How an RPC treats other tenants' things."""

    OPEN = "open"  # about the deployment, not about anyone's things (device info, health)
    OWN = "own"  # reads or changes only the caller's things: another tenant's id reads as NOT_FOUND
    CREATE = "create"  # makes a new thing owned by the caller (checked against its quotas)


def undeclared(service: ServiceDescriptor, scopes: Mapping[str, Scope]) -> list[str]:
    """The service's RPCs that `scopes` says nothing about (must be empty), and names it lists that do not exist."""
    names = {m.name for m in service.methods}
    return sorted((names - scopes.keys()) | {f"{n} (no such RPC)" for n in scopes.keys() - names})
