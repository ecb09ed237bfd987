"""The serving reference of issue 13: a lean in-process KV-cache loop (prefill, then one decode_step per
character for the whole batch, vectorised sampling), at float32 and at bfloat16; the faster one counts. A precision
the host's GEMM peaks make hopeless (bench/host.py) is skipped: its tok/s is 0 and `<name>_skipped` says why."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from bench.host import skip_reason
from chargpt.core.model import GPT, KVCache
from chargpt.core.sampling import filter_logits, make_generator
from chargpt.sampling_params import SamplingParams


def lean_loop(model: GPT, streams: int, new_tokens: int, params: SamplingParams, dtype: torch.dtype,
              start_id: int) -> float:
    """Seconds to generate `new_tokens` characters for each of `streams` one-character prompts."""
    lean = copy.deepcopy(model).to(dtype).eval()
    cache = KVCache(lean.config, streams, dtype=dtype)
    prompts = torch.full((streams, 1), start_id, dtype=torch.long)
    generator = make_generator(0)
    with torch.inference_mode():
        start = time.perf_counter()
        logits = lean.prefill(prompts, torch.ones(streams, dtype=torch.long), cache)[:, -1]  # (B, V)
        for step in range(new_tokens):
            probs = torch.softmax(filter_logits(logits, params), dim=-1)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
            if step + 1 < new_tokens:
                logits = lean.decode_step(tokens, cache)
        return time.perf_counter() - start


def kv_reference(model: GPT, streams: int, new_tokens: int, params: SamplingParams, start_id: int,
                 repeats: int = 1) -> dict[str, Any]:
    """tok/s of the lean loop at each precision (best of `repeats`), and the best precision's figure."""
    out: dict[str, Any] = {"streams": streams}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        reason = skip_reason(name, 2 * model.config.parameter_count() * streams / 1e9)  # one decode step's work
        if reason is not None:  # bf16 emulated (issue 25): the loop would take many minutes
            print(f"lean KV loop, {streams} streams, {name}: {reason}", flush=True)
            out[f"{name}_tok_s"], out[f"{name}_skipped"] = 0.0, reason
            continue
        lean_loop(model, streams, min(8, new_tokens), params, dtype, start_id)  # warm-up (kernel set-up)
        seconds = min(lean_loop(model, streams, new_tokens, params, dtype, start_id) for _ in range(repeats))
        out[f"{name}_tok_s"] = streams * new_tokens / seconds
    out["best"] = max(("float32", "bfloat16"), key=lambda n: out[f"{n}_tok_s"])
    out["tok_s"] = out[f"{out['best']}_tok_s"]
    return out
