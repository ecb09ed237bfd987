"""Who is calling: a tenant and a role, carried through each request in a context variable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum

from chargpt.errors import NotFoundError, PermissionDeniedError

DEFAULT_TENANT = "default"  # single-user deployments, and everything stored before tenants existed
SHARED_OWNER = ""  # built-in corpora: every tenant reads them, none may change them


class Role(StrEnum):
    """What a key may do: admins see and manage every tenant's things, members their own, readers only read."""

    ADMIN = "admin"
    MEMBER = "member"
    READER = "reader"


@dataclass(frozen=True)
class Principal:
    """The caller of one request, resolved from its key."""

    tenant: str
    role: Role
    key_id: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def can_see(self, owner: str) -> bool:
        """True if a thing owned by `owner` exists for this caller (shared things exist for everyone)."""
        return self.is_admin or owner in (self.tenant, SHARED_OWNER)

    def can_change(self, owner: str) -> bool:
        """True if this caller may modify or delete a thing owned by `owner` (shared things: nobody)."""
        return owner != SHARED_OWNER and self.role is not Role.READER and (self.is_admin or owner == self.tenant)


# With no keys configured every caller is this one: today's single-user behaviour, unchanged.
SINGLE_USER = Principal(tenant=DEFAULT_TENANT, role=Role.ADMIN, key_id="")

_current: ContextVar[Principal] = ContextVar("chargpt_principal", default=SINGLE_USER)


def current_principal() -> Principal:
    """The caller of the request being handled (SINGLE_USER outside a request or without keys)."""
    return _current.get()


def set_principal(principal: Principal) -> None:
    """Make `principal` the caller for the rest of the current task (an HTTP route's dependency)."""
    _current.set(principal)


@contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    """Run the enclosed code (one request's handler) as `principal`."""
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)


def check_visible(owner: str, what: str, principal: Principal | None = None) -> None:
    """NOT_FOUND (exactly as if it did not exist) when the caller may not see a thing owned by `owner`."""
    caller = principal or current_principal()
    if not caller.can_see(owner):
        raise NotFoundError(f"{what} not found")


def check_changeable(owner: str, what: str, principal: Principal | None = None) -> None:
    """NOT_FOUND for another tenant's thing; PERMISSION_DENIED for a reader key or a shared built-in."""
    caller = principal or current_principal()
    check_visible(owner, what, caller)
    if not caller.can_change(owner):
        reason = "built-in and read-only" if owner == SHARED_OWNER else f"not writable with a {caller.role} key"
        raise PermissionDeniedError(f"{what} is {reason}")


def require_write(action: str, principal: Principal | None = None) -> Principal:
    """The caller, if its role may create things; PERMISSION_DENIED for reader keys."""
    caller = principal or current_principal()
    if caller.role is Role.READER:
        raise PermissionDeniedError(f"{action} needs a member or admin key (this key is a reader)")
    return caller
