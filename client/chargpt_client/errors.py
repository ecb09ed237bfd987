"""Typed client exceptions: every gRPC status becomes a subclass of ChargptClientError."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

_Detail = TypeVar("_Detail", bound=Message)


class ChargptClientError(Exception):
    """A call failed; `code` is the gRPC status and `message` the server's explanation."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    @property
    def status_name(self) -> str:
        """The status as the gRPC docs spell it, e.g. "NOT_FOUND"."""
        return str(self.code.name)

    def __str__(self) -> str:
        return f"{self.status_name}: {self.message}"


class Cancelled(ChargptClientError):
    code = grpc.StatusCode.CANCELLED


class Unknown(ChargptClientError):
    code = grpc.StatusCode.UNKNOWN


class FieldViolation(NamedTuple):
    """One bad request field as the server named it (a google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str


class InvalidArgument(ChargptClientError, ValueError):
    """A bad request; `violations` lists the fields the server named, `field` is the first one's ("" if none)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, code: grpc.StatusCode | None = None,
                 violations: Sequence[FieldViolation] = ()) -> None:
        super().__init__(message, code)
        self.violations = list(violations)

    @property
    def field(self) -> str:
        return self.violations[0].field if self.violations else ""


class DeadlineExceeded(ChargptClientError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(ChargptClientError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ChargptClientError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(ChargptClientError):
    code = grpc.StatusCode.PERMISSION_DENIED


class QuotaViolation(NamedTuple):
    """One exceeded quota as the server named it (a google.rpc.QuotaFailure.Violation): subject "tenant:<name>",
    description "<quota>: <why>"."""

    subject: str
    description: str


class ResourceExhausted(ChargptClientError):
    """A limit was hit: `quota_violations` names a tenant's exceeded quotas (nothing was created) and
    `retry_after` is the server's suggested wait in seconds for a rate limit (None when it gave none)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, code: grpc.StatusCode | None = None,
                 quota_violations: Sequence[QuotaViolation] = (), retry_after: float | None = None) -> None:
        super().__init__(message, code)
        self.quota_violations = list(quota_violations)
        self.retry_after = retry_after


class FailedPrecondition(ChargptClientError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ChargptClientError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(ChargptClientError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(ChargptClientError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(ChargptClientError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(ChargptClientError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ChargptClientError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(ChargptClientError):
    code = grpc.StatusCode.UNAUTHENTICATED


ERROR_BY_CODE: dict[grpc.StatusCode, type[ChargptClientError]] = {
    cls.code: cls
    for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists, PermissionDenied,
                ResourceExhausted, FailedPrecondition, Aborted, OutOfRange, Unimplemented, Internal, Unavailable,
                DataLoss, Unauthenticated)
}


def from_rpc_error(error: grpc.RpcError) -> ChargptClientError:
    """The typed exception for a failed call (grpc.RpcError from the sync or the aio API)."""
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    message = (details_fn() if callable(details_fn) else None) or str(error)
    cls = ERROR_BY_CODE.get(code, ChargptClientError)
    if issubclass(cls, InvalidArgument):
        return cls(message, code, field_violations(error))
    if issubclass(cls, ResourceExhausted):
        return cls(message, code, quota_violations(error), retry_after(error))
    return cls(message, code)


def _status_details(error: grpc.RpcError) -> list[Any]:
    """The google.rpc.Status details in the call's grpc-status-details-bin trailer, if any."""
    if not callable(getattr(error, "trailing_metadata", None)):
        return []
    try:
        status = rpc_status.from_call(error)
    except (ValueError, DecodeError):  # undecodable, or contradicting the call's own code or message: not trusted
        return []
    return list(status.details) if status is not None else []


def _unpacked(error: grpc.RpcError, detail_type: type[_Detail]) -> list[_Detail]:
    """Every detail of the failed call that is a `detail_type` (a google.rpc error detail message), unpacked."""
    found: list[_Detail] = []
    for detail in _status_details(error):
        message = detail_type()
        if detail.Unpack(message):
            found.append(message)
    return found


def field_violations(error: grpc.RpcError) -> list[FieldViolation]:
    """The google.rpc.BadRequest field violations of a failed call."""
    return [FieldViolation(v.field, v.description)
            for bad_request in _unpacked(error, error_details_pb2.BadRequest) for v in bad_request.field_violations]


def quota_violations(error: grpc.RpcError) -> list[QuotaViolation]:
    """The google.rpc.QuotaFailure violations of a failed call."""
    return [QuotaViolation(v.subject, v.description)
            for failure in _unpacked(error, error_details_pb2.QuotaFailure) for v in failure.violations]


def retry_after(error: grpc.RpcError) -> float | None:
    """The google.rpc.RetryInfo delay of a failed call in seconds, or None."""
    infos = _unpacked(error, error_details_pb2.RetryInfo)
    return float(infos[0].retry_delay.ToNanoseconds()) / 1e9 if infos else None
