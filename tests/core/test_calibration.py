"""The calibration cache (keyed per host, reused, re-run on demand) and the decisions taken from its figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chargpt.core.calibration import Calibrator
from chargpt.core.config import ModelConfig
from chargpt.core.device import SizeProfile
from chargpt.core.measurements import (
    GemmPeak,
    Timing,
    TrainStep,
    measure_gemm_peak,
    measure_train_step,
    speedup,
    time_interleaved,
)
from chargpt.core.training_choices import CPU_CANDIDATES, choose_cpu_size, train_precision

TINY = ModelConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.0)


def timing(seconds: float) -> Timing:
    return Timing(best_s=seconds, median_s=seconds, spread=0.0, trials=3)


def step(fp32_s: float, bf16_s: float | None, tokens: int = 2048) -> TrainStep:
    return TrainStep(tokens=tokens, threads=1, fp32=timing(fp32_s), bf16=timing(bf16_s) if bf16_s else None)


def test_interleaved_timing_reports_best_median_and_spread() -> None:
    calls = {"a": 0, "b": 0}

    def make(name: str) -> object:
        def call() -> None:
            calls[name] += 1
            sum(range(2000))
        return call

    t = time_interleaved({"a": make("a"), "b": make("b")}, trials=4, trial_s=0.002)
    for name in ("a", "b"):
        assert t[name].trials == 4 and 0 < t[name].best_s <= t[name].median_s and t[name].spread >= 0
        assert calls[name] >= 2 + 4  # two warm-up calls, then at least one per trial


def test_measurement_is_cached_per_host_and_rerun_on_demand(tmp_path: Path) -> None:
    calibrator = Calibrator(tmp_path)
    first = calibrator.train_step(TINY, 2)
    assert first.tokens == 16 and first.fp32.best_s > 0 and first.bf16 is not None
    again = Calibrator(tmp_path)  # a new process reads the file instead of measuring
    assert again.train_step(TINY, 2) == first
    saved = json.loads(calibrator.path.read_text())
    assert saved["host"] == calibrator.host.model_dump() and calibrator.host.cpu_model
    assert saved["host"]["torch_version"] and saved["host"]["cpu_cores"] >= 1
    assert calibrator.measured_at(next(iter(saved["entries"]))) is not None
    again.clear()
    assert not calibrator.path.exists()
    assert Calibrator(tmp_path).train_step(TINY, 2) != first  # measured again: new timings


def test_another_hosts_file_is_ignored(tmp_path: Path) -> None:
    calibrator = Calibrator(tmp_path)
    calibrator.put("gemm", GemmPeak(gflops_fp32=1, gflops_bf16=2, fp32=timing(1), bf16=timing(1)))
    data = json.loads(calibrator.path.read_text())
    data["host"]["cpu_model"] = "some other CPU"
    calibrator.path.write_text(json.dumps(data))
    assert Calibrator(tmp_path).cached("gemm", GemmPeak) is None


def test_gemm_peak_is_measured_once(tmp_path: Path) -> None:
    calibrator = Calibrator(tmp_path)
    peak = calibrator.get("gemm", GemmPeak, lambda: measure_gemm_peak(size=128, budget_s=0.2))
    assert peak.gflops_fp32 > 0 and peak.gflops_bf16 > 0 and peak.fp32.trials >= 3
    assert Calibrator(tmp_path).gemm_peak() == peak  # cached: not measured again at full size


def test_train_step_times_real_model() -> None:
    measured = measure_train_step(TINY, 3, budget_s=0.2)
    assert measured.tokens == 24 and measured.fp32.trials >= 3 and measured.bf16 is not None


def test_precision_follows_the_measurement_not_the_flags() -> None:
    assert train_precision("cpu", True, step(1.0, 0.5)) == "bf16"
    assert train_precision("cpu", True, step(1.0, 2.0)) == "fp32"
    assert train_precision("cpu", True, step(1.0, 0.99)) == "fp32"  # within the margin: keep fp32
    assert train_precision("cpu", True, None) == "fp32"  # nothing measured
    assert train_precision("cuda", True, None) == "bf16" and train_precision("cuda", False, None) == "fp32"
    assert train_precision("mps", False, step(1.0, 0.1)) == "fp32"


def test_faster_host_gets_bigger_cpu_model() -> None:
    def host(tokens_per_s_at_64: float) -> dict[str, SizeProfile]:
        measured: list[str] = []

        def measure(p: SizeProfile) -> TrainStep:  # throughput falls with width squared
            measured.append(p.name)
            tokens = p.batch_size * p.block_size
            rate = tokens_per_s_at_64 * (64 / p.n_embd) ** 2
            return step(tokens / rate, tokens / rate * 2, tokens)
        choice = choose_cpu_size(measure)
        return {"choice": choice.profile, "measured": measured}  # type: ignore[dict-item]

    slow, fast, faster = host(30_000), host(150_000), host(400_000)
    assert slow["choice"] == CPU_CANDIDATES[0] and slow["measured"] == ["cpu"]  # stops at the first too slow
    assert fast["choice"].n_embd == 96
    assert faster["choice"].n_embd == 128
    assert {p.n_layer for p in CPU_CANDIDATES} == {CPU_CANDIDATES[0].n_layer}  # one architecture family


@pytest.mark.parametrize("bf16_s,expected", [(0.5, "bf16"), (2.0, "fp32")])
def test_size_choice_reports_precision(bf16_s: float, expected: str) -> None:
    choice = choose_cpu_size(lambda p: step(0.001, 0.001 * bf16_s))
    assert choice.precision == expected and choice.profile == CPU_CANDIDATES[-1]
    assert set(choice.tokens_per_s) == {p.name for p in CPU_CANDIDATES}


def test_speedup_is_the_median_of_paired_rounds() -> None:
    """Rounds run both variants seconds apart; their ratio cancels load that hit both, and a lucky trial of one
    variant alone (here the slow one's 0.7) cannot flip the comparison as a best-of-each would."""
    fast = Timing(best_s=1.0, median_s=1.0, spread=1.0, trials=5, samples=(1.0, 2.0, 2.0, 1.0, 1.0))
    slow = Timing(best_s=0.7, median_s=1.2, spread=2.4, trials=5, samples=(1.2, 2.4, 2.4, 0.7, 1.2))
    assert speedup(fast, slow) == pytest.approx(1.2)
    assert speedup(slow, fast) == pytest.approx(1 / 1.2)
    assert speedup(timing(2.0), timing(3.0)) == pytest.approx(1.5)  # cached before samples were kept: best trials


def test_interleaved_timing_keeps_each_rounds_sample() -> None:
    t = time_interleaved({"a": lambda: sum(range(100)), "b": lambda: sum(range(200))}, trials=4, trial_s=0.001)
    assert len(t["a"].samples) == len(t["b"].samples) == 4 and min(t["a"].samples) == t["a"].best_s
