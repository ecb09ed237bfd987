"""Which runner decodes a step: ggml for batches of at most `ggml_up_to` rows, torch for larger ones.

The two are measured per host and batch size (serving_choices.py): on the AVX2 host of issue 25 ggml's threads
made a lone stream's step 2x faster, while torch's batched kernels keep up at 64 rows. A runner's keys and values
are its own, so when the batch crosses the line the running sequences move: the other runner rebuilds each one's
window from its history (a prefill), as a sliding window does. Growing past `ggml_up_to` always moves them (the
ggml context holds only that many); shrinking back moves them only when little is cached (at most one window's
worth of characters in all), so a long-running batch that thins out is not re-prefilled at every crossing.
"""

from __future__ import annotations

from inference_service.engine.ggml_runner import GgmlRunner
from inference_service.engine.model_runner import ModelRunner
from inference_service.engine.outputs import ModelRunnerOutput, SchedulerOutput


class RunnerByBatch:
    """The torch and ggml runners behind one step interface; the scheduler's rows live in the active one."""

    def __init__(self, torch_runner: ModelRunner, ggml: GgmlRunner, ggml_up_to: int, block_size: int) -> None:
        self.torch_runner, self.ggml = torch_runner, ggml
        self.ggml_up_to, self.block_size = ggml_up_to, block_size
        self.active: ModelRunner | GgmlRunner = ggml
        self.moves = 0  # how often the running sequences changed runner (tests and logs)

    def execute(self, scheduled: SchedulerOutput) -> ModelRunnerOutput:
        wanted = self.ggml if len(scheduled.rows) <= self.ggml_up_to else self.torch_runner
        if wanted is not self.active and (wanted is self.torch_runner or self._cheap_to_move(scheduled)):
            self.active.clear()
            wanted.load(scheduled.decode)
            self.active = wanted
            self.moves += 1
        return self.active.execute(scheduled)

    def _cheap_to_move(self, scheduled: SchedulerOutput) -> bool:
        return sum(r.cache_len for r in scheduled.decode) <= self.block_size

    def remove_row(self, index: int, last: int, length: int) -> None:
        self.active.remove_row(index, last, length)

    def clear_row(self, index: int) -> None:
        self.active.clear_row(index)

    def clear(self) -> None:
        self.active.clear()

    def close(self) -> None:
        self.torch_runner.close()
        self.ggml.close()
