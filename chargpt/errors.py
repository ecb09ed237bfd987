"""Domain errors shared by the core and both services; the server maps each class to one gRPC status."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError


class ChargptError(Exception):
    """Base class of every error chargpt raises on purpose."""


class FieldViolation(NamedTuple):
    """One bad request field: its path (e.g. "training.learning_rate") and what is wrong with it."""

    field: str
    description: str


class InvalidArgumentError(ChargptError, ValueError):
    """A request field (named in `field`) has a bad value; `violations` lists every bad field (the server sends
    them as a google.rpc.BadRequest detail)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.violations: list[FieldViolation] = [FieldViolation(field, message)] if field else []
        super().__init__(f"{field}: {message}" if field else message)

    @staticmethod
    def from_violations(violations: Sequence[FieldViolation]) -> InvalidArgumentError:
        """One error for several bad fields; `field` is the first one's and the message lists them all."""
        if not violations:
            raise ValueError("from_violations needs at least one violation")
        error = InvalidArgumentError("", "; ".join(f"{v.field}: {v.description}" for v in violations))
        error.field, error.violations = violations[0].field, list(violations)
        return error


class NotFoundError(ChargptError, LookupError):
    """The named thing does not exist."""


class AlreadyExistsError(ChargptError):
    """A thing with that name exists and differs from what was asked for."""


class FailedPreconditionError(ChargptError):
    """The request is valid but the system is not in a state to carry it out."""


class ResourceExhaustedError(ChargptError):
    """A size or capacity limit was exceeded."""


class QuotaExceededError(ResourceExhaustedError):
    """A tenant's quota (named in `quota`, e.g. "queued_jobs") would be exceeded; the server sends a
    google.rpc.QuotaFailure detail naming it. Nothing was created."""

    def __init__(self, tenant: str, quota: str, description: str) -> None:
        self.tenant, self.quota, self.description = tenant, quota, description
        super().__init__(f"quota {quota} of tenant {tenant!r} exceeded: {description}")


class RateLimitedError(ResourceExhaustedError):
    """A per-key rate limit was hit; retrying after `retry_after_seconds` may succeed (gRPC sends a
    google.rpc.RetryInfo detail, HTTP a 429 with Retry-After)."""

    def __init__(self, limit: str, description: str, retry_after_seconds: float) -> None:
        self.limit, self.retry_after_seconds = limit, max(0.0, retry_after_seconds)
        super().__init__(f"rate limit {limit} reached: {description}; retry in {self.retry_after_seconds:.1f}s")


class UnavailableError(ChargptError):
    """Temporarily unable to serve (loading, shutting down); retrying later may succeed."""


class PermissionDeniedError(ChargptError):
    """The caller may not do this (e.g. a path outside the allowed root)."""


class UnauthenticatedError(ChargptError):
    """Missing or wrong credentials."""


class DataLossError(ChargptError):
    """Stored data is corrupt: a hash mismatch, a truncated file."""


class VocabularyError(InvalidArgumentError):
    """Text contains characters outside the tokenizer's vocabulary."""

    def __init__(self, characters: list[str], field: str = "text") -> None:
        self.characters = characters
        shown = ", ".join(repr(c) for c in characters[:20])
        more = f" and {len(characters) - 20} more" if len(characters) > 20 else ""
        super().__init__(field, f"characters outside the model's vocabulary: {shown}{more}")


class CheckpointError(ChargptError):
    """Base of checkpoint loading errors."""


class CheckpointNotFoundError(CheckpointError, NotFoundError):
    """The checkpoint directory or one of its files is missing."""


class CheckpointFormatError(CheckpointError, FailedPreconditionError):
    """The manifest is malformed, of an unknown format version, or does not match the weights."""


class CheckpointCorruptError(CheckpointError, DataLossError):
    """The weights do not hash to the manifest's sha256."""


class NonFiniteLogitsError(FailedPreconditionError):
    """A model's forward pass gave NaN or infinite logits: its weights or its dtype are numerically broken, so
    no character can be sampled. Retrying the same request on the same model gives the same failure."""


Schema = TypeVar("Schema", bound=BaseModel)


def validated(schema: type[Schema], values: dict[str, Any],
              field_path: Callable[[str], str] = lambda name: name) -> Schema:
    """The schema's instance from `values`, or INVALID_ARGUMENT naming the (request) field of the first error:
    `field_path` maps the schema's field name to the name the caller knows it by (e.g. `training.learning_rate`)."""
    try:
        return schema.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        message = str(first["msg"]).removeprefix("Value error, ")
        if not isinstance(first.get("input"), dict | BaseModel):
            message += f" (got {first.get('input')!r})"
        raise InvalidArgumentError(field_path(name), message) from None
