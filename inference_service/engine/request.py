"""A generation request as the engine sees it, and the events it hands back to the RPC handler."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from enum import Enum

from chargpt.sampling_params import SamplingParams
from inference_service.constraints import ConstraintState
from inference_service.logits_processors import PenaltyState, RowControls, has_controls
from inference_service.logprobs import TokenLogprob
from inference_service.sampler import RowSampling


class StopMatcher:
    """Finds stop sequences in streamed text, holding back any tail that could still become one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Text safe to release now, and the stop sequence that just completed (None if none did)."""
        if not self.stops:
            return text, None
        buffer = self.held + text
        matches = [(buffer.find(s), s) for s in self.stops if s in buffer]
        if matches:
            at, stop = min(matches)
            self.held = ""
            return buffer[:at], stop
        keep = self._longest_partial(buffer)
        self.held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[: len(buffer) - keep], None

    def _longest_partial(self, buffer: str) -> int:
        """Length of the longest suffix of buffer that is a proper prefix of some stop sequence."""
        for k in range(min(len(buffer), max(len(s) for s in self.stops) - 1), 0, -1):
            tail = buffer[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def flush(self) -> str:
        """Release whatever was held back (generation ended without completing a stop sequence)."""
        out, self.held = self.held, ""
        return out


class Finish(Enum):
    LENGTH = "length"
    STOP = "stop"
    CANCELLED = "cancelled"
    DEADLINE = "deadline_exceeded"
    ERROR = "error"


@dataclass
class Summary:
    """What the last stream message reports."""

    finish: Finish
    prompt_tokens: int
    generated_tokens: int
    seed: int
    prompt_chars_dropped: int
    queue_seconds: float
    ttft_seconds: float
    total_seconds: float
    stop_sequence: str
    params: SamplingParams
    error: BaseException | None = None
    index: int = 0


@dataclass
class Delta:
    """Text released and characters generated in one step by sample `index` (logprobs only if asked for)."""

    index: int
    text: str
    logprobs: list[TokenLogprob]


Event = Delta | Summary


@dataclass
class Chunk:
    """What one sample produced since its previous chunk; `summary` is set in its last one."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    summary: Summary | None = None


class Outbox:
    """A request's undelivered output, shared by its samples and touched only on the event loop.

    The engine adds each step's events; the consumer takes everything at once, one Chunk per sample. A consumer
    that lags (a slow client, a busy loop) finds several steps' characters in one chunk instead of a backlog of
    messages, and a prompt one finds one chunk per step: never more than one message per step per sample.
    """

    def __init__(self) -> None:
        self._texts: dict[int, list[str]] = {}
        self._logprobs: dict[int, list[TokenLogprob]] = {}
        self._summaries: dict[int, Summary] = {}
        self._ready = asyncio.Event()

    def add(self, event: Event) -> None:
        if isinstance(event, Summary):
            self._summaries[event.index] = event
            self._texts.setdefault(event.index, [])
        else:
            self._texts.setdefault(event.index, []).append(event.text)
            if event.logprobs:
                self._logprobs.setdefault(event.index, []).extend(event.logprobs)
        self._ready.set()

    async def take(self) -> list[Chunk]:
        """Wait until something is pending, then everything pending, in the order the samples first produced."""
        await self._ready.wait()
        self._ready.clear()
        chunks = [Chunk(i, "".join(parts), self._logprobs.get(i, []), self._summaries.get(i))
                  for i, parts in self._texts.items()]
        self._texts, self._logprobs, self._summaries = {}, {}, {}
        return chunks


@dataclass
class GenRequest:
    """One generation: its inputs, its engine-side progress, and the queue its results go to."""

    prompt_ids: list[int]
    prompt_chars_dropped: int
    params: SamplingParams  # the request's (max_new_tokens, stop, logprobs and the sampling settings)
    seed: int  # this sample's (see service.sample_seed)
    deadline: float | None  # time.monotonic() after which the request is dropped
    loop: asyncio.AbstractEventLoop
    outbox: Outbox = field(default_factory=Outbox)  # shared by a request's n samples
    index: int = 0  # which of the request's samples this is
    logit_bias: tuple[tuple[int, float], ...] = ()  # params.logit_bias by the model's character ids
    constraint: ConstraintState | None = None  # this sample's place in its regex/choices/JSON schema automaton
    priority: int = 0  # admission order among waiting requests: lower first (vLLM's convention)
    arrival: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # set from the event loop; the engine reads it between steps
    # Engine-side state (touched only by the engine thread).
    history: list[int] = field(default_factory=list)
    cache_len: int = 0
    generated: int = 0
    joined: float = 0.0
    first_token: float = 0.0
    last_token: float = 0.0
    penalties: PenaltyState | None = None

    def __post_init__(self) -> None:
        self.sampling = RowSampling(self.params, random.Random(self.seed))
        self.matcher = StopMatcher(list(self.params.stop))
        self.has_controls = has_controls(self.params)  # read every step: computed once (params are frozen)

    @property
    def max_new_tokens(self) -> int:
        return self.params.max_new_tokens

    @property
    def logprobs(self) -> int:
        """Top alternatives to report per character; 0: none."""
        return self.params.logprobs

    def row_controls(self) -> RowControls:
        return RowControls(self.params, self.penalties, self.logit_bias)

    def cancel(self) -> None:
        self.cancelled = True

    def summary(self, finish: Finish, stop: str = "", error: BaseException | None = None) -> Summary:
        now = time.monotonic()
        joined = self.joined or now
        return Summary(finish=finish, prompt_tokens=len(self.prompt_ids), generated_tokens=self.generated,
                       seed=self.seed, prompt_chars_dropped=self.prompt_chars_dropped,
                       queue_seconds=joined - self.arrival,
                       ttft_seconds=(self.first_token - self.arrival) if self.first_token else 0.0,
                       total_seconds=now - self.arrival, stop_sequence=stop, params=self.params, error=error,
                       index=self.index)
