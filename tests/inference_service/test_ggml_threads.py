"""The ggml runner's thread count, measured while serving: a busy host makes ggml's spinning threads collapse."""

from __future__ import annotations

import itertools

from inference_service.engine.ggml_threads import FIRST_INTERVAL, MAX_INTERVAL, ThreadChooser

IDLE = {2: 0.0016, 1: 0.0024}  # seconds per lone-row step on the idle AVX2 host of issue 25
BUSY = {2: 0.63, 1: 0.0032}  # the same host with both cores taken by other processes


def serve(chooser: ThreadChooser, host: dict[int, float], steps: int, batch: int = 1) -> list[int]:
    """Run `steps` decode steps on a host whose step times are `host`; the thread count of each."""
    counts = []
    for _ in range(steps):
        threads = chooser.threads_for(batch)
        chooser.record(batch, threads, host[threads])
        counts.append(threads)
    return counts


def test_both_counts_are_measured_first_then_the_faster_is_used() -> None:
    chooser = ThreadChooser(2)
    counts = serve(chooser, IDLE, FIRST_INTERVAL)
    assert sorted(counts[:2]) == [1, 2] and set(counts[2:-1]) == {2}


def test_a_collapse_moves_to_one_thread_and_losing_tries_back_off() -> None:
    chooser = ThreadChooser(2)
    serve(chooser, IDLE, 100)
    counts = serve(chooser, BUSY, 20_000)
    tries = [i for i, c in enumerate(counts) if c == 2]
    assert counts[0] == 2 and counts[1] == 1  # one slow step, then one thread
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps == sorted(gaps) and gaps[-1] == MAX_INTERVAL  # each losing try waits twice as long as the last
    assert len(tries) < 20  # a few hundred milliseconds lost in 20,000 steps


def test_a_winning_try_switches_back_at_once() -> None:
    chooser = ThreadChooser(2)
    serve(chooser, BUSY, 500)
    counts = serve(chooser, IDLE, 2 * MAX_INTERVAL)
    first_try = counts.index(2)
    assert counts[first_try + 1] == 2 and counts[first_try:first_try + 100].count(1) <= 3  # tries of one thread


def test_batch_sizes_are_measured_apart_and_one_thread_never_tries() -> None:
    chooser = ThreadChooser(2)
    serve(chooser, IDLE, 50, batch=1)
    serve(chooser, {2: 0.020, 1: 0.010}, 50, batch=64)  # a host where one thread wins at 64 rows
    assert chooser.best_for(1) == 2 and chooser.best_for(64) == 1 and chooser.best_for(100) == 1
    assert set(serve(ThreadChooser(1), IDLE | {1: 1.0}, 10)) == {1}
