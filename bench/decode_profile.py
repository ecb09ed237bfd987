"""Where one stream's per-character time goes (issue 25): the host's memory bandwidth, the model's decode step alone,
the engine's Python per step, and the transport per message over gRPC and HTTP.

    python -m bench.decode_profile [--no-server] [--chars N] [--rounds N]

The notebook-size model (6x384, block 256, 65 characters, random init) decodes one stream with the BALANCED preset.
(a) forward: FastDecoder.step for one row halfway through the window, on one thread and on all, with the model's own
matrices and with the lone row's transposed copies (interleaved), torch.profiler's op count and the matmuls' share;
beside it the time to stream the weights' bytes once (a sum over a float32 tensor of the same size: the bandwidth
floor of a GEMV step). (b) engine: the engine's parts (scheduler, model runner, output processor) stepped in this
thread for one request, each phase timed (with the layout (a) measured faster). (c) transport: single streams
through a server subprocess over gRPC and HTTP, interleaved, with the server's CPU time per character; per
character minus (b) is what the RPC layers add. (d) the server's measured thread plan for one stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import torch
from torch.profiler import ProfilerActivity, profile

from bench.inference import FULL
from bench.inference_server import (
    MODEL,
    corpus_text,
    free_port,
    measured_model,
    one_http_stream,
    one_stream,
    start_server,
    wait_ready,
    write_model,
)
from bench.serving_common import cpu_seconds
from chargpt.core.measurements import speedup, time_interleaved
from chargpt.core.model import GPT, KVCache
from chargpt.sampling_params import SAMPLING_PRESETS, SamplingPreset
from chargpt.v1 import inference_pb2_grpc
from inference_service.decode_policy import DecodePolicy
from inference_service.engine.model_metrics import ModelMetrics
from inference_service.engine.model_runner import ModelRunner
from inference_service.engine.output_processor import OutputProcessor
from inference_service.engine.request import GenRequest
from inference_service.engine.scheduler import Scheduler
from inference_service.fast_decode import DEFAULT_ATTENTION, FastDecoder
from inference_service.metrics import InferenceMetrics
from inference_service.server import default_torch_threads
from inference_service.serving_choices import LAYOUT_MARGIN


def best_ms(fn: Any, calls: int, repeats: int = 5) -> tuple[float, float]:
    """Milliseconds per call, wall and this process's CPU: the best of `repeats` timed loops (other load only ever
    adds time; CPU time leaves out the waits for a core that a shared host adds)."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            fn()
        walls.append((time.perf_counter() - start) / calls)
        cpus.append((time.process_time() - cpu) / calls)
    return 1e3 * min(walls), 1e3 * min(cpus)


def weight_bytes(model: GPT) -> int:
    """Bytes a decode step reads from the weights: every matrix once (embeddings: one row each, ignored)."""
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters()
               if p.dim() == 2 and not name.startswith(("wte", "wpe")))


def forward(model: GPT, threads: int) -> dict[str, Any]:
    """(a) The decode step alone for one row, with the model's own matrices and with the lone row's transposed
    copies (interleaved), each step's op count and matmul share, and the time to read the weights' bytes once."""
    torch.set_num_threads(threads)
    nbytes = weight_bytes(model)
    flat = torch.ones(nbytes // 4)
    position = model.config.block_size // 2
    tokens, positions = torch.tensor([1]), torch.tensor([position])
    decoders = {name: FastDecoder(model, KVCache(model.config, 1), lone_transposed=name == "lone_transposed")
                for name in ("plain", "lone_transposed")}
    steps = {name: partial(d.step, tokens, positions, position + 1) for name, d in decoders.items()}
    with torch.inference_mode():
        read_ms, _ = best_ms(flat.sum, 20)
        timings = time_interleaved(steps, trials=9, trial_s=0.05, budget_s=5.0)
        out: dict[str, Any] = {"threads": threads, "weights_mb": nbytes / 1e6, "read_weights_ms": read_ms,
                               "read_gb_s": nbytes / read_ms / 1e6,
                               "transposed_speedup": speedup(timings["lone_transposed"], timings["plain"])}
        for name, step in steps.items():
            out[name] = {"step_ms": 1e3 * timings[name].best_s, "step_median_ms": 1e3 * timings[name].median_s,
                         **_op_profile(step)}
    return out


def _op_profile(step: Callable[[], object]) -> dict[str, Any]:
    """torch.profiler over 10 steps: top-level ops per step and the matmuls' share of the ops' time."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    ops = Counter(e.name for e in prof.events() if e.cpu_parent is None)
    averages = prof.key_averages()
    mm_us = sum(e.self_cpu_time_total for e in averages if e.key in ("aten::mm", "aten::addmm"))
    total_us = sum(e.self_cpu_time_total for e in averages)
    return {"top_level_ops": sum(ops.values()) // 10, "matmul_share": mm_us / total_us if total_us else 0.0}


def engine_parts(model: GPT, chars: int, lone_transposed: bool) -> dict[str, Any]:
    """(b) One BALANCED request stepped through the engine's parts on this thread (one torch thread, as the
    measured plan runs a lone stream here), each phase's milliseconds per character."""
    return asyncio.run(_engine_parts(model, chars, lone_transposed))


async def _engine_parts(model: GPT, chars: int, lone_transposed: bool) -> dict[str, Any]:
    cache = KVCache(model.config, 4)
    metrics = ModelMetrics(InferenceMetrics(), MODEL)
    scheduler = Scheduler(cache, model.config.block_size, 4, 4, metrics)
    runner = ModelRunner(model, cache, DecodePolicy(max_threads=1, lone_transposed=lone_transposed), DEFAULT_ATTENTION)
    processor = OutputProcessor("".join(chr(32 + i) for i in range(model.config.vocab_size)), metrics)
    params = SAMPLING_PRESETS[SamplingPreset.BALANCED].model_copy(update={"max_new_tokens": chars})
    request = GenRequest(prompt_ids=[0], prompt_chars_dropped=0, params=params, seed=0, deadline=None,
                         loop=asyncio.get_running_loop())
    scheduler.add((request,))
    phases = dict.fromkeys(("schedule", "model", "sample_and_file", "flush"), 0.0)
    newcomers, steps, cpu = scheduler.take_waiting(), 0, time.thread_time()
    with torch.inference_mode():
        while newcomers or scheduler.running:
            t0 = time.perf_counter()
            scheduled = scheduler.schedule(newcomers, time.monotonic())
            t1 = time.perf_counter()
            output = runner.execute(scheduled)
            t2 = time.perf_counter()
            scheduler.free(processor.process(scheduled, output))
            t3 = time.perf_counter()
            processor.flush()
            t4 = time.perf_counter()
            for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                phases[name] += seconds
            newcomers, steps = [], steps + 1
            await asyncio.sleep(0)  # the loop files the step's output, as it would beside the engine thread
    cpu = time.thread_time() - cpu
    runner.close()
    out = {f"{name}_ms": 1e3 * seconds / steps for name, seconds in phases.items()}
    out["total_ms"] = sum(out.values())
    out["total_cpu_ms"] = 1e3 * cpu / steps
    return out


async def transport(models_dir: Path, rounds: int, chars: int) -> dict[str, Any]:
    """(c, d) Single streams over gRPC and HTTP from one server, interleaved; its measured thread plan."""
    port, http_port = free_port(), free_port()
    args = argparse.Namespace(threads=default_torch_threads(), kv_cache_dtype="auto", decode_runner="auto")
    server = start_server(models_dir, port, http_port, args)
    results: dict[str, list[dict[str, Any]]] = {"grpc": [], "http": []}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
            await wait_ready(channel)
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            served = await measured_model(stub)
            for r in range(rounds + 1):  # round 0 warms both paths up
                for name, stream in (("grpc", one_stream(stub, r, chars)), ("http", one_http_stream(http, r, chars))):
                    cpu = cpu_seconds(server.pid)
                    run = await stream
                    run["server_cpu"] = cpu_seconds(server.pid) - cpu
                    if r:
                        results[name].append(run)
    finally:
        server.terminate()
        server.wait(30)
    out: dict[str, Any] = {"parallel_from": served.parallel_decode_from, "torch_threads": args.threads}
    for name, runs in results.items():
        out[name] = {"ms_per_char": min(1e3 * r["total"] / r["tokens"] for r in runs),
                     "server_cpu_ms_per_char": min(1e3 * r["server_cpu"] / r["tokens"] for r in runs),
                     "ttft_ms": min(1e3 * r["ttft"] for r in runs)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-server", action="store_true", help="skip (c, d): no server subprocess")
    parser.add_argument("--server-only", action="store_true", help="only (c, d): end to end, for before/after runs")
    parser.add_argument("--chars", type=int, default=255)
    parser.add_argument("--rounds", type=int, default=3, help="single streams per protocol")
    args = parser.parse_args()
    out: dict[str, Any] = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        model = write_model(Path(tmp) / "models", corpus_text(), FULL.config)
        if not args.server_only:
            out |= in_process(model, args.chars)
        if not args.no_server:
            out["transport"] = asyncio.run(transport(Path(tmp) / "models", args.rounds, args.chars))
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2, default=float))


def in_process(model: GPT, chars: int) -> dict[str, Any]:
    """(a) on one thread and on all, then (b) on one thread; restores torch's thread count."""
    before = torch.get_num_threads()
    out: dict[str, Any] = {"forward": [forward(model, t) for t in sorted({1, before})]}
    torch.set_num_threads(1)
    lone = out["forward"][0]["transposed_speedup"] * LAYOUT_MARGIN > 1  # as the calibration would decide
    out["engine"] = engine_parts(model, chars, lone)
    torch.set_num_threads(before)
    return out

if __name__ == "__main__":
    main()
