"""A served model's decode thread plan in words: one wording for the server, `chargpt models show` and the bench."""

from __future__ import annotations


def describe_decode_threads(parallel_from: int, split_from: int) -> str:
    """A served model's thread plan in words, from GetModel's parallel_decode_from and split_decode_from (0: one
    torch thread for every batch; 0: no row groups)."""
    if not parallel_from:
        return "one torch thread"
    if split_from and parallel_from >= split_from:
        return f"one torch thread below a decode batch of {split_from}, one row group per thread from it"
    text = f"every torch thread from a decode batch of {parallel_from}"
    return text + (f", one row group per thread from {split_from}" if split_from else "")
