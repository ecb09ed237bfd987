"""Field errors on the wire: a google.rpc.Status with a BadRequest detail in grpc-status-details-bin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from chargpt_client import AsyncTrainerClient, ClientOptions, InvalidArgument, NotFound, TrainerClient
from chargpt_client.errors import FieldViolation, from_rpc_error
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from pydantic import BaseModel, Field, ValidationError

from chargpt import errors
from chargpt.server.errors import MAX_DETAILS_BYTES, ErrorInterceptor
from chargpt.v1 import trainer_pb2, trainer_pb2_grpc
from trainer_service.server import create_server
from trainer_service.settings import TrainerSettings

DETAILS_KEY = "grpc-status-details-bin"


def _decode(trailing_metadata: Any) -> tuple[status_pb2.Status, list[tuple[str, str]]]:
    """What any gRPC stack does by hand: parse the trailer as google.rpc.Status and unpack its BadRequest."""
    raw = [value for key, value in trailing_metadata if key == DETAILS_KEY]
    assert len(raw) == 1, f"no {DETAILS_KEY} trailer in {trailing_metadata}"
    status = status_pb2.Status.FromString(raw[0])
    bad_request = error_details_pb2.BadRequest()
    assert len(status.details) == 1 and status.details[0].Unpack(bad_request)
    return status, [(v.field, v.description) for v in bad_request.field_violations]


class _Limits(BaseModel):
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)


def _raise(exc: BaseException) -> Callable[[bytes, Any], Any]:
    async def handler(request: bytes, context: Any) -> bytes:
        raise exc
    return handler


def _validation_error() -> ValidationError:
    try:
        _Limits(learning_rate=-1, batch_size=0)
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable: the values are out of bounds")


FAILURES: dict[str, BaseException] = {
    "one": errors.InvalidArgumentError("training.learning_rate", "must be > 0 (got -1)"),
    "several": errors.InvalidArgumentError.from_violations([
        errors.FieldViolation("model.custom.n_head", "must divide n_embd"),
        errors.FieldViolation("training.batch_size", "must be between 1 and 4096 (got 0)")]),
    "pydantic": _validation_error(),
    "huge": errors.InvalidArgumentError.from_violations(
        [errors.FieldViolation(f"f{i}", "x" * 1000) for i in range(100)]),
    "not_found": errors.NotFoundError("no job j"),
}


def _send_trailer(value: bytes) -> Callable[[bytes, Any], Any]:
    async def handler(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "x: bad", trailing_metadata=((DETAILS_KEY, value),))
    return handler


def _bad_request_status(code: grpc.StatusCode, message: str) -> bytes:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[{"field": "x", "description": "bad"}]))
    return status_pb2.Status(code=code.value[0], message=message, details=[detail]).SerializeToString()


# Trailers a buggy or hostile server might send: the client ignores them rather than fail or believe them.
UNTRUSTED_TRAILERS = {
    "garbage": b"\xff\x00not a protobuf",
    "other_code": _bad_request_status(grpc.StatusCode.NOT_FOUND, "x: bad"),
    "other_message": _bad_request_status(grpc.StatusCode.INVALID_ARGUMENT, "something else"),
}


@pytest.fixture
async def failing_address() -> AsyncIterator[str]:
    """A real aio server behind the ErrorInterceptor whose methods raise FAILURES[name] (or send a trailer)."""
    handlers = {name: grpc.unary_unary_rpc_method_handler(_raise(exc)) for name, exc in FAILURES.items()}
    trailers = {**UNTRUSTED_TRAILERS, "consistent": _bad_request_status(grpc.StatusCode.INVALID_ARGUMENT, "x: bad")}
    handlers |= {name: grpc.unary_unary_rpc_method_handler(_send_trailer(value)) for name, value in trailers.items()}
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Failing", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


async def _fail(address: str, name: str) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary(f"/test.Failing/{name}")(b"", timeout=10)
    return err.value


async def test_one_field_travels_as_a_bad_request(failing_address: str) -> None:
    err = await _fail(failing_address, "one")
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "training.learning_rate: must be > 0 (got -1)"  # the readable message is unchanged
    status, violations = _decode(err.trailing_metadata())
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and status.message == err.details()
    assert violations == [("training.learning_rate", "must be > 0 (got -1)")]
    client_error = from_rpc_error(err)
    assert isinstance(client_error, InvalidArgument) and client_error.field == "training.learning_rate"


async def test_several_fields_and_pydantic_errors(failing_address: str) -> None:
    several = from_rpc_error(await _fail(failing_address, "several"))
    assert isinstance(several, InvalidArgument) and several.field == "model.custom.n_head"
    assert several.violations == [FieldViolation("model.custom.n_head", "must divide n_embd"),
                                  FieldViolation("training.batch_size", "must be between 1 and 4096 (got 0)")]
    assert "model.custom.n_head: must divide n_embd; training.batch_size:" in several.message
    err = await _fail(failing_address, "pydantic")
    assert [field for field, _ in _decode(err.trailing_metadata())[1]] == ["learning_rate", "batch_size"]


async def test_details_stay_small_and_other_errors_carry_none(failing_address: str) -> None:
    err = await _fail(failing_address, "huge")
    status, violations = _decode(err.trailing_metadata())
    assert 1 <= len(violations) < 100 and len(status.SerializeToString()) < MAX_DETAILS_BYTES + 1000
    assert violations[0][0] == "f0" and len(violations[0][1]) <= 301
    not_found = await _fail(failing_address, "not_found")
    assert not_found.code() is grpc.StatusCode.NOT_FOUND
    assert DETAILS_KEY not in [key for key, _ in not_found.trailing_metadata()]
    client_error = from_rpc_error(not_found)
    assert isinstance(client_error, NotFound) and not hasattr(client_error, "field")


@pytest.mark.parametrize("name", list(UNTRUSTED_TRAILERS))
async def test_untrusted_details_are_ignored(failing_address: str, name: str) -> None:
    client_error = from_rpc_error(await _fail(failing_address, name))
    assert isinstance(client_error, InvalidArgument) and client_error.message == "x: bad"
    assert client_error.violations == [] and client_error.field == ""


async def test_consistent_details_from_another_server_are_read(failing_address: str) -> None:
    """The control for the test above: the same hand-made trailer, consistent with the call, is believed."""
    client_error = from_rpc_error(await _fail(failing_address, "consistent"))
    assert isinstance(client_error, InvalidArgument) and client_error.violations == [FieldViolation("x", "bad")]


@pytest.fixture
async def trainer_address(tmp_path: Path) -> AsyncIterator[str]:
    server, port = await create_server(TrainerSettings(port=0, data_dir=tmp_path, device="cpu"))
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


def _raw_list_jobs(address: str) -> Any:
    """The real trainer, called as another stack would: only a channel, a stub and the trailing metadata."""
    with grpc.insecure_channel(address) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        try:
            stub.ListTrainingJobs(trainer_pb2.ListTrainingJobsRequest(page_token="not-a-token"), timeout=10)
        except grpc.RpcError as err:
            return err
    raise AssertionError("a bad page token was accepted")


async def test_a_plain_sync_grpc_channel_sees_the_details(trainer_address: str) -> None:
    call = await asyncio.to_thread(_raw_list_jobs, trainer_address)
    assert call.code() is grpc.StatusCode.INVALID_ARGUMENT and call.details().startswith("page_token: ")
    status, violations = _decode(call.trailing_metadata())
    assert status.message == call.details() and [field for field, _ in violations] == ["page_token"]


def _sync_upload(address: str) -> InvalidArgument:
    with TrainerClient(address, ClientOptions(timeout=10)) as client, pytest.raises(InvalidArgument) as err:
        client.upload_corpus("no/slashes", "some text " * 50)
    return err.value


async def test_sync_and_async_clients_expose_the_field(trainer_address: str) -> None:
    async with AsyncTrainerClient(trainer_address, ClientOptions(timeout=10)) as client:
        with pytest.raises(InvalidArgument) as async_err:
            await client.upload_corpus("no/slashes", "some text " * 50)
    for err in (await asyncio.to_thread(_sync_upload, trainer_address), async_err.value):
        assert err.field == "header.name" and [v.field for v in err.violations] == ["header.name"]
        assert str(err).startswith("INVALID_ARGUMENT: header.name: ")
