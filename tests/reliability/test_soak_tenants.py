"""The tenant soak's bookkeeping: which failures are well-formed refusals, and when the run passes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench.grpc_key import bearer_key
from bench.soak_tenants import HttpRefusal, Tally, run_tenant_soak, verdict
from chargpt import errors
from chargpt.server.errors import status_metadata

CODE = grpc.StatusCode.RESOURCE_EXHAUSTED


def _rpc_error(exc: errors.ChargptError, code: grpc.StatusCode = CODE) -> grpc.aio.AioRpcError:
    """The error a client sees for `exc` (trailers built by the server's own error mapping)."""
    trailers = grpc.aio.Metadata(*status_metadata(code, str(exc), exc))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details=str(exc))


def test_grpc_refusals_need_retry_info() -> None:
    tally = Tally()
    assert tally.failure(_rpc_error(errors.RateLimitedError("concurrent_streams", "1 in flight", 1.5))) == 1.5
    assert tally.failure(_rpc_error(errors.ResourceExhaustedError("queue full"))) is None
    assert tally.failure(_rpc_error(errors.NotFoundError("model m not found"), grpc.StatusCode.NOT_FOUND)) is None
    assert (tally.ok, tally.refused, len(tally.malformed), dict(tally.errors)) == (0, 1, 1, {"NOT_FOUND": 1})
    assert "without RetryInfo" in tally.malformed[0] and tally.requests == 3
    assert json.loads(json.dumps(tally.summary())) == {"requests": 3, "ok": 0, "refused": 1,
                                                       "malformed": tally.malformed, "errors": {"NOT_FOUND": 1}}


@pytest.mark.parametrize(("status", "header", "wait"), [
    (429, "2", 2.0), (429, "0", 0.0), (429, None, None), (429, "soon", None), (429, "1.5", None),
    (429, "-1", None)])
def test_http_refusals_need_a_retry_after(status: int, header: str | None, wait: float | None) -> None:
    tally = Tally()
    assert tally.failure(HttpRefusal(status, header)) == wait
    assert (tally.refused, len(tally.malformed)) == ((1, 0) if wait is not None else (0, 1))


def test_an_http_date_retry_after_is_honoured_and_other_statuses_are_errors() -> None:
    tally = Tally()
    wait = tally.failure(HttpRefusal(429, format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)))
    assert wait is not None and 25 < wait <= 30
    assert tally.failure(HttpRefusal(503, "1")) is None and tally.failure(AssertionError("wrong length")) is None
    assert dict(tally.errors) == {"HTTP 503": 1, "wrong length": 1} and tally.refused == 1


def _tally(ok: int = 10, refused: int = 0, malformed: int = 0, errors_: int = 0) -> Tally:
    tally = Tally(ok=ok, refused=refused, malformed=["x"] * malformed)
    if errors_:
        tally.errors["UNAVAILABLE"] = errors_
    return tally


def test_the_run_passes_only_when_the_good_tenants_are_untouched_and_the_third_is_refused_well() -> None:
    assert verdict({"a": _tally(), "b": _tally(), "c": _tally(refused=5)}, "c") == []
    for tallies, blamed in (({"a": _tally(errors_=1), "b": _tally(), "c": _tally(refused=5)}, "a:"),
                            ({"a": _tally(), "b": _tally(refused=1), "c": _tally(refused=5)}, "b:"),
                            ({"a": _tally(), "b": _tally(), "c": _tally(refused=0)}, "never refused"),
                            ({"a": _tally(), "b": _tally(), "c": _tally(refused=5, malformed=1)}, "c:"),
                            ({"a": _tally(ok=0), "b": _tally(), "c": _tally(refused=5)}, "no request answered")):
        problems = verdict(tallies, "c")
        assert len(problems) == 1 and blamed in problems[0], problems


async def _echo_key(request: bytes, context: Any) -> bytes:
    return dict(context.invocation_metadata()).get("authorization", "").encode()


async def _stream_key(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield await _echo_key(request, context)


async def _upload_key(requests: AsyncIterator[bytes], context: Any) -> bytes:
    assert [r async for r in requests] == [b"x"]
    return await _echo_key(b"", context)


async def test_the_soaks_channels_send_the_tenants_key() -> None:
    handlers = {"Unary": grpc.unary_unary_rpc_method_handler(_echo_key),
                "Stream": grpc.unary_stream_rpc_method_handler(_stream_key),
                "Upload": grpc.stream_unary_rpc_method_handler(_upload_key)}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=bearer_key("cgk_a_b")) as channel:
            assert await channel.unary_unary("/test.Echo/Unary")(b"", timeout=10) == b"Bearer cgk_a_b"
            chunks = [c async for c in channel.unary_stream("/test.Echo/Stream")(b"", timeout=10)]
            assert chunks == [b"Bearer cgk_a_b"]

            async def upload() -> AsyncIterator[bytes]:
                yield b"x"
            assert await channel.stream_unary("/test.Echo/Upload")(upload(), timeout=10) == b"Bearer cgk_a_b"
    finally:
        await server.stop(0)


@pytest.mark.slow
async def test_short_tenant_soak_passes(tmp_path: Path) -> None:
    """Issue 26's done-when: three tenants on real service processes, the third over its inference limits."""
    result = await run_tenant_soak(seconds=10, concurrency=6, workdir=tmp_path, tenants=3)
    assert result["problems"] == [], result["tenants"]
    assert result["tenants"]["tenant3"]["refused"] > 0 and result["exit_codes"] == {"trainer": 0, "inference": 0}
    assert all(result["tenants"][name]["ok"] > 0 for name in ("tenant1", "tenant2", "tenant3"))
