"""How many threads ggml's next decode step uses: measured while serving, because a busy host changes the answer.

ggml's threads meet at a spinning barrier after every op of a step. On the idle 2-core AVX2 host of issue 25 two
threads decoded a lone row 1.5x faster than one (1.6 against 2.4 ms); with other processes keeping both cores
busy (load average 3.3), a descheduled thread stalled the other's spin for a scheduler time slice at every
barrier, and the same step took 630 ms on two threads and 3.2 ms on one (torch: 4.5 ms). So the runner keeps a
running mean of the step time per thread count and batch size, uses the faster count, and now and then tries the
other one for a step. A try that loses makes the next one wait twice as long (up to MAX_INTERVAL steps), so on a
host that stays busy a collapse costs one slow step per few thousand; a try that wins switches at once.
"""

from __future__ import annotations

FIRST_INTERVAL = 32  # steps between tries of the other thread count, doubled after each losing try
MAX_INTERVAL = 4096
WEIGHT = 0.2  # of a new step time in the running mean of the count in use


class ThreadChooser:
    """The thread count for each ggml decode step: the faster of one thread and all of them, per batch size."""

    def __init__(self, max_threads: int) -> None:
        self.max_threads = max_threads
        self._mean: dict[tuple[int, int], float] = {}  # (batch bucket, threads) -> seconds per step
        self._since: dict[int, int] = {}  # steps since the last try, per bucket
        self._interval: dict[int, int] = {}
        self._trying: int | None = None  # the count being tried in this step

    def threads_for(self, batch: int) -> int:
        """The count for a decode step of `batch` rows: the faster one measured, or the other when it is due a
        try (the first steps of a bucket try both)."""
        if self.max_threads == 1:
            return 1
        bucket = batch.bit_length()
        best = self._best(bucket)
        since = self._since.get(bucket, 0) + 1
        self._since[bucket] = since
        other = 1 if best == self.max_threads else self.max_threads
        if (bucket, other) not in self._mean or since >= self._interval.get(bucket, FIRST_INTERVAL):
            self._since[bucket], self._trying = 0, other
            return other
        self._trying = None
        return best

    def best_for(self, batch: int) -> int:
        """The faster count measured for `batch` rows, without a try (for steps that also prefill)."""
        return self._best(batch.bit_length()) if self.max_threads > 1 else 1

    def record(self, batch: int, threads: int, seconds: float) -> None:
        """A decode step's wall time. A tried count's time replaces its mean (one step says how it does now);
        the count in use is averaged."""
        if self.max_threads == 1:
            return
        bucket, key = batch.bit_length(), (batch.bit_length(), threads)
        old = self._mean.get(key)
        tried = self._trying == threads
        self._mean[key] = seconds if old is None or tried else old + WEIGHT * (seconds - old)
        if tried:
            interval = self._interval.get(bucket, FIRST_INTERVAL)
            won = self._best(bucket) == threads
            self._interval[bucket] = FIRST_INTERVAL if won else min(2 * interval, MAX_INTERVAL)
            self._trying = None

    def _best(self, bucket: int) -> int:
        """The count with the lower mean step time (all of them until both are measured)."""
        many, one = self._mean.get((bucket, self.max_threads)), self._mean.get((bucket, 1))
        return 1 if many is not None and one is not None and one < many else self.max_threads
