"""Whose loaded model is whose: per-tenant model names in the one registry, and who may see or unload them.

A model's registry key is its name for the shared (preloaded) models and tenant "default" (single-user
deployments and every test of them see exactly today's names), and "tenant/name" for every other tenant, so two
tenants may both load "shakespeare". Callers name their own and shared models by the plain name; admins reach
another tenant's as "tenant/name" ('/' is not allowed in a model name, so the two never collide).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from chargpt import errors
from chargpt.server.tenancy.principal import DEFAULT_TENANT, SHARED_OWNER, Principal, current_principal


class Owned(Protocol):
    name: str  # the registry key
    owner: str


E = TypeVar("E", bound=Owned)


def model_key(owner: str, name: str) -> str:
    """The registry key of `owner`'s model `name`."""
    return name if owner in (SHARED_OWNER, DEFAULT_TENANT) else f"{owner}/{name}"


def name_for(entry: Owned, caller: Principal | None = None) -> str:
    """The model's name as `caller` addresses it: plain for its own and shared models, "tenant/name" otherwise."""
    caller = caller or current_principal()
    return entry.name.rpartition("/")[2] if entry.owner == caller.tenant else entry.name


def find_visible(models: Mapping[str, E], name: str, caller: Principal | None = None) -> E:
    """The model `name` means to `caller`: its own, else a shared one (admins: any, as "tenant/name"); another
    tenant's reads exactly as a model that is not loaded."""
    caller = caller or current_principal()
    for key in [name] if "/" in name else [model_key(caller.tenant, name), name]:
        entry = models.get(key)
        if entry is not None and caller.can_see(entry.owner):
            return entry
    raise errors.NotFoundError(f"no model named {name!r} is loaded")


def visible(entries: list[E], caller: Principal | None = None) -> list[E]:
    """The entries `caller` may see (its own and shared ones; admins: all), by the name it sees them under."""
    caller = caller or current_principal()
    return sorted((e for e in entries if caller.can_see(e.owner)), key=lambda e: name_for(e, caller))


def check_unloadable(entry: Owned, caller: Principal | None = None) -> None:
    """PERMISSION_DENIED for a reader key, or a non-admin unloading a shared (preloaded) model."""
    caller = caller or current_principal()
    if not (caller.is_admin or caller.can_change(entry.owner)):
        raise errors.PermissionDeniedError(f"model {name_for(entry, caller)!r} cannot be unloaded with a "
                                           f"{caller.role} key" + (" (it is shared)" if not entry.owner else ""))
