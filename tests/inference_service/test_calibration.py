"""Serving choices follow the measured decode timings: dtypes and the batch from which every thread is used."""

from __future__ import annotations

from pathlib import Path

import torch

from chargpt.core.calibration import Calibrator, Timing
from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT
from inference_service.calibration import DecodeCalibration, DecodeChoice, calibrated_decode, decide

from .conftest import ServerFactory

F32, MIXED, B16 = "float32/float32", "bfloat16/float32", "bfloat16/bfloat16"


def t(seconds: float) -> Timing:
    return Timing(best_s=seconds, median_s=seconds, spread=0.0, trials=3)


def calibration(big: dict[str, float], single: dict[str, float], threads: dict[str, float]) -> DecodeCalibration:
    return DecodeCalibration(big_batch=64, max_threads=2, dtypes_big={k: t(v) for k, v in big.items()},
                             dtypes_single={k: t(v) for k, v in single.items()},
                             threads={k: t(v) for k, v in threads.items()})


LADDER = {"B1:t1": 1.0, "B1:t2": 1.5, "B8:t1": 2.0, "B8:t2": 1.9, "B64:t1": 10.0, "B64:t2": 6.0}


def test_dtypes_follow_the_big_batch() -> None:
    bf16_host = decide(calibration({F32: 10, MIXED: 7, B16: 9}, {F32: 1.0, MIXED: 0.9}, LADDER))
    assert (bf16_host.weight_dtype, bf16_host.cache_dtype) == ("bfloat16", "float32")
    fp32_host = decide(calibration({F32: 10, MIXED: 17, B16: 19}, {F32: 1.0, MIXED: 1.9}, LADDER))
    assert (fp32_host.weight_dtype, fp32_host.cache_dtype) == ("float32", "float32")


def test_a_big_batch_win_that_costs_a_lone_stream_too_much_is_refused() -> None:
    choice = decide(calibration({F32: 10, MIXED: 9, B16: 9.5}, {F32: 1.0, MIXED: 1.5}, LADDER))
    assert choice.weight_dtype == "float32"


def test_parallel_from_is_the_measured_crossover() -> None:
    assert decide(calibration({F32: 1}, {F32: 1}, LADDER)).parallel_from == 64  # B8 saves only 5%: not enough
    ladder = {**LADDER, "B8:t2": 1.0}
    assert decide(calibration({F32: 1}, {F32: 1}, ladder)).parallel_from == 8
    never = {**LADDER, "B64:t2": 10.0}
    assert decide(calibration({F32: 1}, {F32: 1}, never)).parallel_from == 65  # one thread always as fast


def test_decode_is_measured_once_per_host_and_shape(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=7, n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.0)).eval()
    calibrator = Calibrator(tmp_path)
    choice = calibrated_decode(calibrator, model, 4, 2)
    assert choice.weight_dtype in ("float32", "bfloat16") and 1 <= choice.parallel_from <= 5
    entries = calibrator.entries()
    assert len(entries) == 1 and next(iter(entries)).startswith("decode:L1-H2-C16-T8-V7-B4")
    assert calibrated_decode(Calibrator(tmp_path), model, 4, 2) == choice


def rounds(*seconds: float) -> Timing:
    return Timing(best_s=min(seconds), median_s=sorted(seconds)[len(seconds) // 2],
                  spread=max(seconds) / min(seconds) - 1, trials=len(seconds), samples=seconds)


def test_one_lucky_trial_does_not_decide_the_thread_policy() -> None:
    """The cached calibration that made a busy host decode every batch on one thread: two threads won most rounds
    at batch 64, but one thread's single best trial (a quiet moment) beat two threads' best."""
    threads = {"B1:t1": rounds(5.0, 5.1, 9.0, 5.2), "B1:t2": rounds(3.7, 3.8, 6.0, 3.9),
               "B64:t1": rounds(30.0, 19.7, 31.0, 30.5), "B64:t2": rounds(21.2, 21.5, 22.0, 21.3)}
    c = DecodeCalibration(big_batch=64, max_threads=2, dtypes_big={F32: t(1)}, dtypes_single={F32: t(1)},
                          threads=threads)
    assert decide(c).parallel_from == 1


def test_dtype_choice_uses_paired_rounds() -> None:
    """bf16 ran faster in every round but one, where a burst slowed it while fp32 had its one quiet trial (the
    best of either): it is still chosen."""
    big = {F32: rounds(10.0, 10.2, 6.5, 10.0, 10.3), MIXED: rounds(7.0, 7.1, 20.0, 7.0, 7.2)}
    single = {F32: rounds(1.0, 1.0, 1.0, 1.0, 1.0), MIXED: rounds(1.0, 1.0, 1.0, 1.0, 1.0)}
    c = DecodeCalibration(big_batch=64, max_threads=2, dtypes_big=big, dtypes_single=single, threads={})
    assert decide(c).weight_dtype == "bfloat16"


async def test_recalibrate_forgets_the_hosts_decode_timings(make_server: ServerFactory, tmp_path: Path) -> None:
    stale = Calibrator(tmp_path)
    stale.put("decode:measured-on-a-busy-day", DecodeChoice(weight_dtype="float32", cache_dtype="", parallel_from=65))
    await make_server(calibration_dir=tmp_path)
    assert "decode:measured-on-a-busy-day" in stale.entries()
    await make_server(calibration_dir=tmp_path, recalibrate=True)
    assert stale.entries() == {}
