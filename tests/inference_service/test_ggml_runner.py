"""The ggml decode runner (llama.cpp through llama-cpp-python) behind the engine, and the choice between runners."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch

from chargpt.core.checkpoint import Checkpoint, load_checkpoint
from chargpt.core.measurements import Timing
from chargpt.core.model import KVCache
from chargpt.sampling_params import SamplingParams
from chargpt.v1 import inference_pb2
from inference_service.decode_policy import DecodePolicy
from inference_service.engine.ggml_runner import GgmlRunner
from inference_service.engine.model_metrics import ModelMetrics
from inference_service.engine.model_runner import ModelRunner
from inference_service.engine.request import GenRequest
from inference_service.engine.runner_choice import RunnerByBatch
from inference_service.engine.scheduler import Scheduler
from inference_service.metrics import InferenceMetrics
from inference_service.serving_choices import DecodeCalibration, DecodeChoice, ggml_up_to
from inference_service.serving_plan import restrict

from .conftest import ServerFactory, drive_steps, write_checkpoint

ROWS = 4
PROMPTS = ("the cat", "a", "dog")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Checkpoint:
    return load_checkpoint(write_checkpoint(tmp_path / "tiny"), "cpu", torch.float32)


def sampled(prompt_ids: list[int], n: int, seed: int = 0, temperature: float = 0.0) -> GenRequest:
    return GenRequest(prompt_ids=prompt_ids, prompt_chars_dropped=0,
                      params=SamplingParams(temperature=temperature, max_new_tokens=n), seed=seed, deadline=None,
                      loop=asyncio.get_running_loop())


def run(runner: ModelRunner | GgmlRunner | RunnerByBatch, checkpoint: Checkpoint,
        arrivals: list[list[GenRequest]]) -> list[int]:
    return drive_steps(runner, checkpoint.model.config.block_size, checkpoint.tokenizer.vocabulary, arrivals, ROWS)


def torch_runner(checkpoint: Checkpoint) -> ModelRunner:
    model = checkpoint.model
    return ModelRunner(model, KVCache(model.config, ROWS), DecodePolicy(max_threads=1), "sdpa")


def ggml_runner(checkpoint: Checkpoint, rows: int = ROWS) -> GgmlRunner:
    return GgmlRunner(checkpoint.model, checkpoint.tokenizer.vocabulary, rows, threads=1)


def texts(checkpoint: Checkpoint, runner: ModelRunner | GgmlRunner | RunnerByBatch) -> list[list[int]]:
    """Three greedy requests arriving at steps 0, 1 and 4 (the first two slide their windows twice, rows move as
    the shorter ones finish)."""
    requests = [sampled(checkpoint.tokenizer.encode(p), n) for p, n in zip(PROMPTS, (60, 60, 20), strict=True)]
    run(runner, checkpoint, [[requests[0]], [requests[1]], [], [], [requests[2]]])
    return [r.history for r in requests]


async def test_ggml_decodes_the_same_greedy_text_as_torch_through_slides_and_row_moves(
        checkpoint: Checkpoint) -> None:
    window = checkpoint.model.config.block_size
    on_torch = texts(checkpoint, torch_runner(checkpoint))
    ggml = ggml_runner(checkpoint)
    try:
        assert texts(checkpoint, ggml) == on_torch
        assert len(on_torch[0]) > window + window // 4 and ggml.seq_of_row == []  # slid twice; every row freed
    finally:
        ggml.close()


async def test_ggml_logits_are_the_models_up_to_its_tanh_gelu(checkpoint: Checkpoint) -> None:
    """One step's logits from both runners: equal to within the GELU approximation, not bit for bit."""
    logits = []
    for make in (torch_runner, ggml_runner):
        runner = make(checkpoint)
        request = sampled(checkpoint.tokenizer.encode("the cat"), 1)
        s = Scheduler(runner, checkpoint.model.config.block_size, ROWS, 8, ModelMetrics(InferenceMetrics(), "t"))
        s.add((request,))
        logits.append(runner.execute(s.schedule(s.take_waiting(), time.monotonic())).logits)
        runner.close()
    assert logits[0].shape == logits[1].shape == (1, checkpoint.model.config.vocab_size)
    difference = (logits[0].log_softmax(-1) - logits[1].log_softmax(-1)).abs().max().item()
    assert 0 < difference < 0.05


async def test_sequences_move_between_runners_as_the_batch_crosses_the_line(checkpoint: Checkpoint) -> None:
    """ggml up to two rows: the third arrival moves both running sequences to torch (rebuilt from their histories).
    When it finishes, the two left hold more than a window's worth of characters, so they stay; when one of them
    finishes, the last moves back. The text is torch's all along."""
    on_torch = texts(checkpoint, torch_runner(checkpoint))
    both = RunnerByBatch(torch_runner(checkpoint), ggml_runner(checkpoint, rows=2), 2,
                         checkpoint.model.config.block_size)
    try:
        assert texts(checkpoint, both) == on_torch
        assert both.moves == 2 and both.active is both.ggml
        run(both, checkpoint, [[sampled(checkpoint.tokenizer.encode("a"), 5)]])
        assert both.moves == 2  # a lone request on ggml: nothing moves
    finally:
        both.close()


async def test_seeded_sampling_on_ggml_repeats(checkpoint: Checkpoint) -> None:
    """A seed reproduces its text on the ggml runner (the same batch: ggml's numbers are its own, not torch's)."""
    outputs = []
    for _ in range(2):
        runner = ggml_runner(checkpoint)
        request = sampled(checkpoint.tokenizer.encode("the"), 40, seed=7, temperature=1.0)
        run(runner, checkpoint, [[request]])
        runner.close()
        outputs.append(request.history)
    assert outputs[0] == outputs[1]


def timing(ms: float) -> Timing:
    return Timing(best_s=ms / 1e3, median_s=ms / 1e3, spread=0.0, trials=1)


@pytest.mark.parametrize(("ggml_ms", "expected"), [
    ({1: 1.0, 4: 2.0, 16: 9.0, 64: 40.0}, 4),  # loses from 16 rows
    ({1: 1.0, 4: 2.0, 16: 5.0, 64: 15.0}, 64),  # wins everywhere
    ({1: 2.9, 4: 2.0, 16: 5.0, 64: 17.0}, 0),  # within the margin at one row: never
    ({1: 1.0, 4: 4.0, 16: 5.0, 64: 17.0}, 1),  # a loss at 4 ends it, whatever follows
])
def test_ggml_serves_the_batches_up_to_its_first_lost_race(ggml_ms: dict[int, float], expected: int) -> None:
    torch_ms = {1: 3.0, 4: 4.0, 16: 8.0, 64: 18.0}
    races = {f"B{b}:torch": timing(ms) for b, ms in torch_ms.items()}
    races |= {f"B{b}:ggml:t2": timing(ms) for b, ms in ggml_ms.items()}
    races |= {f"B{b}:ggml:t1": timing(ms * 1.5) for b, ms in ggml_ms.items()}  # the faster count is what counts
    c = DecodeCalibration(big_batch=64, max_threads=2, dtypes_big={}, ladder={}, runners=races)
    assert ggml_up_to(c) == expected


async def test_a_model_served_on_ggml_generates_and_says_so(make_server: ServerFactory, tmp_path: Path) -> None:
    served = await make_server(decode_runner="ggml", max_batch_size=4)
    write_checkpoint(served.models_dir / "tiny")
    loaded = (await served.load("tiny", "tiny")).model
    assert loaded.ggml_decode_up_to == 4
    reply = await served.stub.Generate(inference_pb2.GenerateRequest(
        model="tiny", prompt="the cat", max_new_tokens=40, temperature=0.0), timeout=30)
    engine = served.server.registry.models["tiny"].engine
    assert len(reply.text) == 40 and isinstance(engine.runner, RunnerByBatch)
    assert engine.runner.active is engine.runner.ggml
    torch_served = await make_server(decode_runner="torch")
    write_checkpoint(torch_served.models_dir / "tiny")
    assert (await torch_served.load("tiny", "tiny")).model.ggml_decode_up_to == 0
    same = await torch_served.stub.Generate(inference_pb2.GenerateRequest(
        model="tiny", prompt="the cat", max_new_tokens=40, temperature=0.0), timeout=30)
    assert same.text == reply.text  # this model's greedy text does not depend on the GELU's approximation


def test_a_load_that_names_its_dtype_decodes_on_torch() -> None:
    """ggml's numbers are not float32's: only `dtype auto` takes the measured runner (--decode-runner ggml aside)."""
    measured = DecodeChoice(weight_dtype="float32", cache_dtype="", parallel_from=65, ggml_up_to=16)
    assert restrict(measured, measure_dtype=True).ggml_up_to == 16
    assert restrict(measured, measure_dtype=False).ggml_up_to == 0


def test_ggml_races_at_its_faster_thread_count() -> None:
    """Two ggml threads collapsed (a busy host), one thread still beats torch: ggml serves, on one thread."""
    races = {"B1:torch": timing(3.6), "B1:ggml:t2": timing(630.0), "B1:ggml:t1": timing(2.8),
             "B4:torch": timing(9.0), "B4:ggml:t2": timing(900.0), "B4:ggml:t1": timing(9.5)}
    c = DecodeCalibration(big_batch=64, max_threads=2, dtypes_big={}, ladder={}, runners=races)
    assert ggml_up_to(c) == 1
