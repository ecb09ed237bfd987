"""Call-layer helpers shared by the sync and asyncio clients: deadlines, retry decisions, stream state."""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator

import grpc

from chargpt.v1 import inference_pb2
from chargpt_client import from_proto
from chargpt_client import types as t
from chargpt_client.errors import DeadlineExceeded, from_rpc_error
from chargpt_client.options import NO_RETRY, ClientOptions, RetryPolicy


class _Default(enum.Enum):
    TOKEN = 0


DEFAULT = _Default.TOKEN
Timeout = float | None | _Default  # DEFAULT: the client's ClientOptions.timeout


class Deadline:
    """An overall deadline across retries; `remaining()` is the next attempt's timeout (None: no deadline)."""

    def __init__(self, timeout: Timeout, options: ClientOptions) -> None:
        seconds = options.timeout if timeout is DEFAULT else timeout
        self._end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        if self._end is None:
            return None
        left = self._end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the call's deadline passed while retrying")
        return left

    def allows(self, delay: float) -> bool:
        return self._end is None or time.monotonic() + delay < self._end


def retry_policy(options: ClientOptions, retry_safe: bool) -> RetryPolicy:
    return options.retry if retry_safe else NO_RETRY


def retry_delay(error: grpc.RpcError, delays: Iterator[float], deadline: Deadline) -> float:
    """Seconds to sleep before retrying `error`, or raise its typed exception when it must not be retried."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    if code == grpc.StatusCode.UNAVAILABLE:
        delay = next(delays, None)
        if delay is not None and deadline.allows(delay):
            return delay
    raise from_rpc_error(error) from None


class GenerationState:
    """Accumulates a GenerateStream: sample 0's text and logprobs so far and, at the end, its summary (with n > 1,
    the other samples' messages are skipped here: use Generate for every sample)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.logprobs: list[t.TokenLogprob] = []
        self.summary: t.GenerationSummary | None = None

    def add(self, message: inference_pb2.GenerateStreamResponse) -> str:
        if message.index != 0:
            return ""
        if message.HasField("summary"):
            self.summary = from_proto.summary(message.summary)
        self.parts.append(message.text)
        self.logprobs.extend(from_proto.token_logprobs(message.logprobs))
        return message.text

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def result(self) -> t.GenerationResult:
        if self.summary is None:
            raise RuntimeError("the stream has not finished yet")
        return t.GenerationResult(text=self.text, summary=self.summary, logprobs=self.logprobs)
