"""Per-key inference limits: generated characters per minute (a token bucket) and generations in flight."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from chargpt.errors import InvalidArgumentError, QuotaExceededError, RateLimitedError
from chargpt.server.tenancy.policy import TenantLimits
from chargpt.server.tenancy.principal import Principal

STREAM_RETRY_SECONDS = 1.0  # a stream slot frees when some generation ends: no better estimate exists
WINDOW_SECONDS = 60.0


@dataclass
class KeyUsage:
    """One key's character bucket (refilled at limit/60 per second up to the limit) and its generations in flight.
    The bucket may go below zero: characters are counted as they are generated, after the request was admitted."""

    chars: float
    updated: float
    streams: int = 0

    def refill(self, limit: int | None, now: float) -> None:
        """Unlimited keeps the bucket infinite, so a limit set later (the tenants file is re-read) starts full."""
        if limit is None:
            self.chars = math.inf
        else:
            self.chars = min(float(limit), self.chars + (now - self.updated) * limit / WINDOW_SECONDS)
        self.updated = now


@dataclass
class Lease:
    """One admitted generation: it reserved its most characters at admission (so one long request cannot overdraw
    the key), counts what it generates, and on release frees its stream slot and refunds what it did not use."""

    limiter: KeyLimiter
    key: str
    reserved: int = 0
    used: int = 0
    released: bool = False

    def add_chars(self, count: int) -> None:
        self.used += count
        if self.used > self.reserved:  # never expected (max_new_tokens bounds it), but never uncounted
            self.limiter.spend(self.key, self.used - self.reserved)
            self.reserved = self.used

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter.end_stream(self.key, refund=self.reserved - self.used)


class KeyLimiter:
    """Admits generations per key within the key's tenant limits; thread-safe (the engine never calls it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._usage: dict[str, KeyUsage] = {}
        self._lock = threading.Lock()

    def admit(self, caller: Principal, limits: TenantLimits, reserve: int = 1) -> Lease:
        """A lease for one more generation by `caller` that may generate up to `reserve` characters, or
        RateLimitedError with when to retry (InvalidArgumentError if `reserve` could never fit the key's limit)."""
        key = f"{caller.tenant}:{caller.key_id}"  # one key's usage; single-user and --auth-token: one bucket
        _check_not_zero(caller.tenant, limits)
        per_minute = limits.generated_chars_per_minute
        if per_minute is not None and reserve > per_minute:
            raise InvalidArgumentError("max_new_tokens", f"n x max_new_tokens = {reserve} characters is more than "
                                                         f"this key may generate per minute ({per_minute})")
        with self._lock:
            now = self._clock()
            usage = self._usage.setdefault(key, KeyUsage(math.inf, now))
            usage.refill(per_minute, now)
            _check(usage, limits, reserve)
            usage.streams += 1
            usage.chars -= reserve if per_minute is not None else 0
        return Lease(self, key, reserved=reserve if per_minute is not None else 0)

    def spend(self, key: str, count: int) -> None:
        with self._lock:
            self._usage[key].chars -= count

    def end_stream(self, key: str, refund: int = 0) -> None:
        with self._lock:
            usage = self._usage[key]
            usage.streams -= 1
            usage.chars += max(0, refund)


def _check_not_zero(tenant: str, limits: TenantLimits) -> None:
    """A limit of 0 no wait can meet: QuotaExceededError (a QuotaFailure, no RetryInfo or Retry-After)."""
    for name in ("concurrent_streams", "generated_chars_per_minute"):
        if getattr(limits, name) == 0:
            raise QuotaExceededError(tenant, name, "the limit is 0: this tenant may not generate")


def _check(usage: KeyUsage, limits: TenantLimits, reserve: int) -> None:
    """RateLimitedError if `usage` leaves no room for another generation under `limits`."""
    streams = limits.concurrent_streams
    if streams is not None and usage.streams >= streams:
        raise RateLimitedError("concurrent_streams", f"{usage.streams} generations in flight, the limit is "
                                                     f"{streams}", STREAM_RETRY_SECONDS)
    per_minute = limits.generated_chars_per_minute
    if per_minute is not None and usage.chars < reserve:
        # Until the bucket holds the request's characters again (a limit of 0 never gets here: _check_not_zero).
        wait = (reserve - usage.chars) * WINDOW_SECONDS / per_minute
        raise RateLimitedError("generated_chars_per_minute", f"{per_minute} characters per minute used up",
                               math.ceil(wait * 1000) / 1000)
