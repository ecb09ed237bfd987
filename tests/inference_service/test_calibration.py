"""Serving choices follow the measured decode timings: dtypes and the batch from which every thread is used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chargpt.core.calibration import Calibrator
from chargpt.core.config import ModelConfig
from chargpt.core.measurements import Timing
from chargpt.core.model import GPT
from inference_service.serving_choices import DecodeCalibration, DecodeChoice, calibrated_decode, decide

from .conftest import ServerFactory, write_checkpoint

F32, MIXED, B16 = "float32/float32", "bfloat16/float32", "bfloat16/bfloat16"


def t(seconds: float) -> Timing:
    return Timing(best_s=seconds, median_s=seconds, spread=0.0, trials=3)


def rung(batch: int, f32: tuple[float, float], bf16: tuple[float, float] | None = None) -> dict[str, float]:
    """One batch size's step times: (one thread, two threads) per weight dtype."""
    out = {f"B{batch}:float32:t1": f32[0], f"B{batch}:float32:t2": f32[1]}
    if bf16:
        out |= {f"B{batch}:bfloat16:t1": bf16[0], f"B{batch}:bfloat16:t2": bf16[1]}
    return out


def calibration(big: dict[str, float], ladder: dict[str, float]) -> DecodeCalibration:
    return DecodeCalibration(big_batch=64, max_threads=2, dtypes_big={k: t(v) for k, v in big.items()},
                             ladder={k: t(v) for k, v in ladder.items()})


BF16_WINS = rung(1, (1.0, 1.5), (0.9, 1.4)) | rung(8, (2.0, 1.9), (1.5, 1.45)) | rung(64, (10, 6), (8, 5))


def test_dtypes_follow_the_big_batch() -> None:
    bf16_host = decide(calibration({F32: 10, MIXED: 7, B16: 9}, BF16_WINS))
    assert (bf16_host.weight_dtype, bf16_host.cache_dtype, bf16_host.narrow_from) == ("bfloat16", "float32", 1)
    fp32_host = decide(calibration({F32: 10, MIXED: 17, B16: 19}, rung(1, (1, 2)) | rung(8, (2, 2)) | rung(64, (9, 6))))
    assert (fp32_host.weight_dtype, fp32_host.cache_dtype) == ("float32", "float32")


def test_small_batches_keep_float32_weights_where_they_decode_faster() -> None:
    """Issue 13's host: bf16 weights 1.35x faster at batch 64, 0.78x at batch 1."""
    ladder = rung(1, (4.0, 3.0), (5.2, 3.9)) | rung(8, (8.0, 6.0), (7.0, 5.0)) | rung(64, (34, 24), (26, 18))
    choice = decide(calibration({F32: 24, MIXED: 18, B16: 17}, ladder))
    assert (choice.weight_dtype, choice.cache_dtype, choice.narrow_from) == ("bfloat16", "bfloat16", 8)
    assert choice.parallel_from == 1


def test_narrow_weights_that_win_only_at_the_big_batch_dtype_step_are_not_used() -> None:
    ladder = rung(1, (1, 2), (1.5, 2.5)) | rung(8, (2, 2), (2.5, 2.5)) | rung(64, (9, 6), (9.5, 6.5))
    choice = decide(calibration({F32: 10, MIXED: 9}, ladder))
    assert (choice.weight_dtype, choice.narrow_from) == ("float32", 1)


def test_parallel_from_is_the_measured_crossover() -> None:
    ladder = rung(1, (1.0, 1.5)) | rung(8, (2.0, 1.9)) | rung(64, (10, 6))
    assert decide(calibration({F32: 1}, ladder)).parallel_from == 64  # B8 saves only 5%: not enough
    assert decide(calibration({F32: 1}, ladder | rung(8, (2.0, 1.0)))).parallel_from == 8
    never = ladder | rung(64, (10, 10))
    assert decide(calibration({F32: 1}, never)).parallel_from == 65  # one thread always as fast


def test_row_groups_from_the_measured_crossover() -> None:
    """Row groups of one thread each are used from the smallest measured batch where they beat one thread and
    every thread (and at every larger one); every-thread batches start no later."""
    ladder = rung(1, (1.0, 0.7)) | rung(8, (2.0, 1.2)) | rung(64, (10, 6))
    assert decide(calibration({F32: 1}, ladder)).split_from == 0  # not measured: never
    groups_win_big = ladder | {"B8:float32:g2": 1.3, "B64:float32:g2": 4.5}
    choice = decide(calibration({F32: 1}, groups_win_big))
    assert (choice.parallel_from, choice.split_from) == (1, 64)
    choice = decide(calibration({F32: 1}, groups_win_big | {"B8:float32:g2": 1.0}))
    assert choice.split_from == 8
    # Row groups winning only at batch 8 are not used, and there every thread lost to one: one thread below 64.
    lone_win = ladder | rung(8, (2.0, 2.4)) | {"B8:float32:g2": 1.6}
    choice = decide(calibration({F32: 1}, lone_win))
    assert (choice.parallel_from, choice.split_from) == (64, 0)
    one_thread = DecodeCalibration(big_batch=64, max_threads=1, dtypes_big={F32: t(1)},
                                   ladder={k: t(v) for k, v in groups_win_big.items()})
    assert decide(one_thread).split_from == 0


def test_decode_is_measured_once_per_host_and_shape(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=7, n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.0)).eval()
    calibrator = Calibrator(tmp_path)
    choice = calibrated_decode(calibrator, model, 4, 2)
    assert choice.weight_dtype in ("float32", "bfloat16") and 1 <= choice.parallel_from <= 5
    assert choice.narrow_from in (1, 4, 5) and choice.split_from in (0, 4)
    entries = calibrator.entries()
    assert len(entries) == 1 and next(iter(entries)).startswith("decode:L1-H2-C16-T8-V7-B4")
    ladder = calibrator.get(next(iter(entries)), DecodeCalibration, lambda: pytest.fail("not cached")).ladder
    assert {"B4:float32:g2", "B4:float32:t2", "B1:float32:t1"} <= set(ladder)
    lone = calibrator.get(next(iter(entries)), DecodeCalibration, lambda: pytest.fail("not cached")).lone
    assert set(lone) == {"plain", "transposed"}
    assert calibrated_decode(Calibrator(tmp_path), model, 4, 2) == choice


def rounds(*seconds: float) -> Timing:
    return Timing(best_s=min(seconds), median_s=sorted(seconds)[len(seconds) // 2],
                  spread=max(seconds) / min(seconds) - 1, trials=len(seconds), samples=seconds)


def test_a_lone_row_uses_transposed_copies_only_where_they_measured_faster() -> None:
    """lone_transposed needs a 5% gain over the plain step (paired rounds); a calibration cached before the lone
    row was measured leaves it off; the rest of the plan is decided as before."""
    ladder = {k: t(v) for k, v in BF16_WINS.items()}

    def lone(plain: float, transposed: float) -> DecodeCalibration:
        return DecodeCalibration(big_batch=64, max_threads=2, dtypes_big={F32: t(10), MIXED: t(7)}, ladder=ladder,
                                 lone={"plain": rounds(plain, plain), "transposed": rounds(transposed, transposed)})

    assert decide(lone(4.0, 3.2)).lone_transposed
    assert not decide(lone(4.0, 3.9)).lone_transposed  # 2.5%: not worth the copies' memory
    assert not decide(lone(3.2, 4.0)).lone_transposed
    plain = decide(calibration({F32: 10, MIXED: 7}, BF16_WINS))
    assert not plain.lone_transposed
    assert decide(lone(4.0, 3.2)) == plain.model_copy(update={"lone_transposed": True})


def test_one_lucky_trial_does_not_decide_the_thread_policy() -> None:
    """The cached calibration that made a busy host decode every batch on one thread: two threads won most rounds
    at batch 64, but one thread's single best trial (a quiet moment) beat two threads' best."""
    ladder = {"B1:float32:t1": rounds(5.0, 5.1, 9.0, 5.2), "B1:float32:t2": rounds(3.7, 3.8, 6.0, 3.9),
              "B64:float32:t1": rounds(30.0, 19.7, 31.0, 30.5), "B64:float32:t2": rounds(21.2, 21.5, 22.0, 21.3)}
    c = DecodeCalibration(big_batch=64, max_threads=2, dtypes_big={F32: t(1)}, ladder=ladder)
    assert decide(c).parallel_from == 1


def test_dtype_choice_uses_paired_rounds() -> None:
    """bf16 ran faster in every round but one, where a burst slowed it while fp32 had its one quiet trial (the
    best of either): it is still chosen."""
    big = {F32: rounds(10.0, 10.2, 6.5, 10.0, 10.3), MIXED: rounds(7.0, 7.1, 20.0, 7.0, 7.2)}
    ladder = {k: t(v) for k, v in BF16_WINS.items()}
    c = DecodeCalibration(big_batch=64, max_threads=2, dtypes_big=big, ladder=ladder)
    assert decide(c).weight_dtype == "bfloat16"


async def test_recalibrate_forgets_the_hosts_decode_timings(make_server: ServerFactory, tmp_path: Path) -> None:
    stale = Calibrator(tmp_path)
    stale.put("decode:measured-on-a-busy-day", DecodeChoice(weight_dtype="float32", cache_dtype="", parallel_from=65))
    await make_server(calibration_dir=tmp_path)
    assert "decode:measured-on-a-busy-day" in stale.entries()
    await make_server(calibration_dir=tmp_path, recalibrate=True)
    assert stale.entries() == {}


async def test_settings_override_the_measured_row_groups(make_server: ServerFactory, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Overrides apply as given where they can; where the cache or the thread count cannot run them, GetModel
    reports what runs and the server says why."""
    threads = torch.get_num_threads()
    try:
        served = await make_server(calibration_dir=tmp_path, torch_threads=2, parallel_decode_from=1,
                                   split_decode_from=4)
        write_checkpoint(served.models_dir / "tiny")
        m = (await served.load("tiny", "tiny")).model
        assert (m.parallel_decode_from, m.split_decode_from) == (1, 4)
        never = await make_server(calibration_dir=tmp_path, torch_threads=2, split_decode_from=0)
        write_checkpoint(never.models_dir / "tiny2")
        assert (await never.load("tiny2", "tiny2")).model.split_decode_from == 0
        small = await make_server(calibration_dir=tmp_path, torch_threads=2, max_batch_size=4, split_decode_from=8,
                                  parallel_decode_from=9)
        write_checkpoint(small.models_dir / "tiny3")
        m = (await small.load("tiny3", "tiny3")).model
        assert (m.split_decode_from, m.parallel_decode_from) == (0, 0)  # beyond the cache's 4 rows: one thread
        assert "--split-decode-from 8 applies as 0" in caplog.text
        assert "--parallel-decode-from 9 is never reached: the cache holds 4 rows" in caplog.text
    finally:
        torch.set_num_threads(threads)
