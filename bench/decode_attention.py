"""Decode attention on CPU: SDPA against the written-out matmul path, in the same run, trials interleaved.

    python -m bench.decode_attention [--quick] [--threads N]

For each batch size and cache dtype, both paths run on the same tensors (the notebook's 6 heads of 64, a ragged
batch around mid-context) in alternating order; the figure that decides is the median per-round ratio
sdpa_time / matmul_time (> 1: matmul faster), which a shared, noisy machine moves far less than either time.
The whole decode step (FastDecoder.step on the notebook model) is compared the same way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.host import skip_reason
from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT, KVCache
from inference_service.fast_decode import ATTENTION, FastDecoder

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ModelConfig(vocab_size=65, dropout=0.0)  # the notebook's 6x384, block 256


def timed(fn: Callable[[], object], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, reps: int) -> dict[str, Any]:
    """Per-call seconds of each fn (median over rounds) and the median per-round ratio sdpa / matmul."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for name in order:
            times[name].append(timed(fns[name], reps))
    ratios = [s / m for s, m in zip(times["sdpa"], times["matmul"], strict=True)]
    return {**{f"{name}_ms": 1e3 * statistics.median(t) for name, t in times.items()},
            "ratio_sdpa_over_matmul": statistics.median(ratios)}


def attention_case(batch: int, dtype: torch.dtype, rounds: int, reps: int) -> dict[str, Any]:
    nh, hs, T = CONFIG.n_head, CONFIG.head_size, CONFIG.block_size
    k = torch.randn(batch, nh, T, hs).to(dtype)
    v = torch.randn(batch, nh, T, hs).to(dtype)
    q = torch.randn(batch, nh, 1, hs).to(dtype)
    positions = torch.randint(T // 4, 3 * T // 4, (batch,))
    S = int(positions.max()) + 1
    mask = torch.zeros(batch, 1, 1, S, dtype=dtype)
    mask.masked_fill_(torch.arange(S)[None, None, None, :] > positions[:, None, None, None], float("-inf"))
    scale = hs**-0.5
    fns: dict[str, Callable[[], object]] = {name: partial(f, q, k[:, :, :S], v[:, :, :S], mask, scale)
                                            for name, f in ATTENTION.items()}
    return {"batch": batch, "dtype": str(dtype).split(".")[-1], "keys": S, **interleaved(fns, rounds, reps)}


def step_case(model: GPT, batch: int, dtype: torch.dtype, rounds: int, reps: int) -> dict[str, Any]:
    name = str(dtype).split(".")[-1]
    reason = skip_reason(name, 2 * CONFIG.parameter_count() * batch / 1e9)  # a decode step's matmul work
    if reason is not None:  # bf16 emulated: a batch-64 step would take seconds, the whole case many minutes
        return {"batch": batch, "dtype": name, "what": "FastDecoder.step", "skipped": reason}
    T = CONFIG.block_size
    positions = torch.randint(T // 4, 3 * T // 4, (batch,))
    tokens = torch.randint(0, CONFIG.vocab_size, (batch,))
    decoders = {name: FastDecoder(model, KVCache(CONFIG, batch, dtype=dtype), attention=name)  # type: ignore[arg-type]
                for name in ATTENTION}
    attend = int(positions.max()) + 1
    fns: dict[str, Callable[[], object]] = {name: partial(d.step, tokens, positions, attend)
                                            for name, d in decoders.items()}
    return {"batch": batch, "dtype": str(dtype).split(".")[-1], "what": "FastDecoder.step",
            **interleaved(fns, rounds, reps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and batch sizes (a smoke test)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = (1, 64) if args.quick else (1, 16, 64, 256)
    rounds, reps = (5, 5) if args.quick else (15, 20)
    model = GPT(CONFIG).eval()
    out: dict[str, Any] = {"attention": [], "step": [], "threads": args.threads, "torch": torch.__version__,
                           "time": datetime.now(UTC).isoformat()}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            for batch in batches:
                out["attention"].append(attention_case(batch, dtype, rounds, reps))
                out["step"].append(step_case(model, batch, dtype, rounds, max(1, reps // 4)))
    print(f"{'':<18} {'batch':>5} {'dtype':>9} {'sdpa ms':>9} {'matmul ms':>10} {'sdpa/matmul':>12}")
    for kind in ("attention", "step"):
        for row in out[kind]:
            if row.get("skipped"):
                print(f"{kind:<18} {row['batch']:>5} {row['dtype']:>9} {row['skipped']}")
                continue
            print(f"{kind:<18} {row['batch']:>5} {row['dtype']:>9} {row['sdpa_ms']:>9.3f} {row['matmul_ms']:>10.3f}"
                  f" {row['ratio_sdpa_over_matmul']:>12.2f}")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"decode-attention-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
