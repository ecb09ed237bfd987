"""The decode policy: per decode batch size, the weights, the torch thread count, and whether rows run in groups."""

from __future__ import annotations

from dataclasses import dataclass

from chargpt.core.device import set_torch_threads
from chargpt.decode_plan import describe_decode_threads

DEFAULT_PARALLEL_FROM = 24


@dataclass(frozen=True)
class DecodePolicy:
    """Per decode batch size, the torch threads and the weights a step uses (the registry sets the host's measured
    crossovers, calibration.py). A second thread's fork/join can cost more than it saves on a small batch and pay
    on a big one; bf16 weights can speed a big batch and slow a lone stream. The engine thread sets its own torch
    thread count only when the batch crosses `parallel_from`, and restores `max_threads` when idle (the count a
    new thread starts from; Score's worker sets its own, registry.torch_worker). From `split_from` rows (0: never)
    a step runs as `max_threads` row groups at once, each on one torch thread (fast_decode.RowGroups). A lone float32
    row multiplies by transposed copies of the widening matrices where `lone_transposed` (measured faster)."""

    max_threads: int
    parallel_from: int = DEFAULT_PARALLEL_FROM
    narrow_from: int = 1  # batches from here use the model's own weights; smaller ones its float32 copy, if given
    split_from: int = 0
    max_batch: int | None = None  # the largest batch the cache holds, if bounded
    lone_transposed: bool = False
    ggml_up_to: int = 0  # batches of at most this many rows decode on ggml (engine/runner_choice.py; 0: never)

    @property
    def reported_parallel_from(self) -> int:
        """`parallel_from` as GetModel reports it: 0 when every batch runs on one thread (there is one, or no batch
        the cache holds reaches it)."""
        never = self.max_batch is not None and self.parallel_from > self.max_batch
        return self.parallel_from if self.max_threads > 1 and not never else 0

    @property
    def reported_split_from(self) -> int:
        """The smallest batch decoded as row groups (0: none is); a group needs at least one row."""
        return max(self.split_from, self.max_threads) if self.split_from and self.max_threads > 1 else 0

    def describe_threads(self) -> str:
        """The plan as `chargpt models show` words it (from the same reported values GetModel sends)."""
        return describe_decode_threads(self.reported_parallel_from, self.reported_split_from)

    def groups_for(self, batch: int) -> int:
        split = self.reported_split_from
        return self.max_threads if split and batch >= split else 1

    def threads_for(self, batch: int) -> int:
        if self.groups_for(batch) > 1:
            return 1  # each row group runs on one torch thread
        return self.max_threads if batch >= self.parallel_from else 1

    def narrow_for(self, batch: int) -> bool:
        return batch >= self.narrow_from

    def apply(self, threads: int) -> None:
        set_torch_threads(threads)
