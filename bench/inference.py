"""Inference benchmark on loopback, gRPC and the OpenAI-compatible HTTP API side by side: single-stream and
concurrent decode, TTFT/ITL, Score throughput, and 64 streams each constrained by a regex (a speaker line, then
free text) against the unconstrained 64.

    python -m bench.inference [--quick | --smoke] [--threads N]

The server runs as a subprocess (its own interpreter, as in production) with the notebook's model
(6 layers, 6 heads, 384 wide, block 256, ~10.7M parameters, random init, tiny-shakespeare's 65 characters);
every request generates 255 characters with the BALANCED preset. The server measures its serving choices afresh
(`--recalibrate`, into a temporary calibration directory) and the run records them. References, measured in this
process in the same run: issue 13's lean KV-cache loop (bench/kv_reference.py) at its faster precision, for 1 and
64 streams; the notebook's loop (full recompute, no cache, one request at a time); Score's own computation on a
float32 copy of the model in this process (what Score ran before serving dtypes were measured); and the host's
GEMM peaks. --smoke runs a tiny model with few
characters and streams in well under a minute: it checks that the benchmark works, not how fast anything is.

Client-side ITL: a message carrying n characters (the server coalesces when the client lags) counts as n gaps of
(its gap / n). The server's own inter-token histogram times each character as the engine produced it.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import torch

from bench.inference_server import (
    MODEL,
    corpus_text,
    free_port,
    measured_model,
    one_http_stream,
    one_stream,
    score,
    served_choices,
    start_server,
    wait_ready,
    write_model,
)
from bench.kv_reference import kv_reference
from bench.serving_common import concurrent, run_facts, run_in_tempdir, write_results
from chargpt.core.config import ModelConfig
from chargpt.core.measurements import measure_gemm_peak
from chargpt.core.model import GPT
from chargpt.core.sampling import generate, make_generator
from chargpt.core.tokenizer import CharTokenizer
from chargpt.decode_plan import describe_decode_threads
from chargpt.sampling_params import SAMPLING_PRESETS, SamplingPreset
from chargpt.v1 import inference_pb2, inference_pb2_grpc
from inference_service.scoring import ScoreJob, score_many
from inference_service.server import default_torch_threads
from inference_service.settings import InferenceSettings

NEW_TOKENS = 255
# The constrained row's pattern: a speaker line ("ROMEO:\n"), then free text to the length limit (ending is never
# an option inside it: every character is allowed), so its streams are as long as the unconstrained ones.
SPEAKER_THEN_TEXT = "[A-Z][A-Z ]*:\n(?s:.)*"


@dataclass(frozen=True)
class Scale:
    """How big a run is: the real benchmark, or a smoke test of the benchmark itself."""

    config: ModelConfig
    new_tokens: int
    streams: tuple[int, ...]  # concurrent rows over gRPC; the last is the TTFT-under-load row
    http_streams: tuple[int, ...]
    reference_streams: tuple[int, ...]


FULL = Scale(ModelConfig(vocab_size=65, dropout=0.0), NEW_TOKENS, (16, 64, 256), (1, 64), (1, 64))
SMOKE = Scale(ModelConfig(vocab_size=65, dropout=0.0, n_layer=2, n_head=2, n_embd=32, block_size=64), 31,
              (4, 16), (1, 4), (1, 4))


async def serve_and_measure(args: argparse.Namespace, scale: Scale, models_dir: Path, text: str
                            ) -> dict[str, Any]:
    """Every row that goes through the server, gRPC and HTTP in the same server process."""
    port, http_port = free_port(), free_port()
    server = start_server(models_dir, port, http_port, args)
    block, n = scale.config.block_size, scale.new_tokens
    quick = args.quick or args.smoke
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                             options=[("grpc.max_receive_message_length", 64 << 20)]) as channel, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}",
                                  limits=httpx.Limits(max_connections=1024)) as http:
            await wait_ready(channel)
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            serving = served_choices(await measured_model(stub))

            def grpc_stream(seed: int) -> Awaitable[dict[str, Any]]:
                return one_stream(stub, seed, n)

            def http_stream(seed: int) -> Awaitable[dict[str, Any]]:
                return one_http_stream(http, seed, n)

            await grpc_stream(0)  # warm-up, both protocols
            await http_stream(0)
            out: dict[str, Any] = {"serving": serving,
                                   "single": await concurrent(grpc_stream, 1, 2 if quick else 5, server.pid)}
            for streams in scale.streams:
                out[f"streams_{streams}"] = await concurrent(grpc_stream, streams, 1, server.pid)

            def constrained_stream(seed: int) -> Awaitable[dict[str, Any]]:
                return one_stream(stub, seed, n, SPEAKER_THEN_TEXT)

            many = scale.reference_streams[-1]  # every one of the 64 streams constrained (issue 27)
            out[f"constrained_streams_{many}"] = await concurrent(constrained_stream, many, 1, server.pid)
            for streams in scale.http_streams:
                rounds = (2 if quick else 5) if streams == 1 else 1
                out[f"http_streams_{streams}"] = await concurrent(http_stream, streams, rounds, server.pid)
            score_text = text[: 5_000 if args.smoke else 20_000 if args.quick else 100_000]
            await score(stub, score_text[: 8 * block], block)  # warm-up, as the in-process reference gets
            out["score"] = await score(stub, score_text, block)
            out["score_stride_half"] = await score(stub, score_text, block // 2)
            short = [text[i * block:(i + 1) * block] for i in range(8 if args.smoke else 32 if quick else 128)]
            start = time.perf_counter()
            await asyncio.gather(*[stub.Score(inference_pb2.ScoreRequest(model=MODEL, text=t)) for t in short])
            out["score_short_texts"] = {"texts": len(short), "chars_s": block * len(short) / (time.perf_counter()
                                                                                            - start)}
    finally:
        server.terminate()
        server.wait(timeout=30)
    return out


def reference(model: GPT, tokenizer: CharTokenizer, tokens: int) -> dict[str, Any]:
    """The notebook's loop: full recompute, no cache, one request at a time (in this process)."""
    idx = torch.tensor([tokenizer.encode("\n")])
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        generate(model, idx, tokens, SAMPLING_PRESETS[SamplingPreset.BALANCED], make_generator(0))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"tok_s": tokens / seconds, "tokens": tokens, "seconds": seconds, "tok_per_cpu_s": tokens / cpu}


def score_reference(model: GPT, tokenizer: CharTokenizer, text: str, stride: int) -> dict[str, Any]:
    """Score's computation (scoring.score_many, the server's pass size) on a float32 copy, in this process."""
    ids = tokenizer.encode(text)
    fp32 = copy.deepcopy(model).float().eval()
    jobs, tokens_per_pass = [ScoreJob(ids, stride)], InferenceSettings().score_batch_tokens
    score_many(fp32, [ScoreJob(ids[: 8 * stride], stride)], tokens_per_pass)  # warm-up, as the server gets
    start = time.perf_counter()
    result = score_many(fp32, jobs, tokens_per_pass)[0]
    seconds = time.perf_counter() - start
    return {"chars": len(text), "stride": stride, "chars_s": len(text) / seconds, "seconds": seconds,
            "bits_per_char": result.bits_per_char}


async def run(args: argparse.Namespace, scale: Scale, models_dir: Path) -> dict[str, Any]:
    text = corpus_text()
    model = write_model(models_dir, text, scale.config)
    tokenizer = CharTokenizer.from_text(text)
    torch.set_num_threads(args.threads)
    gemm = measure_gemm_peak()
    out = await serve_and_measure(args, scale, models_dir, text)
    out["gemm_gflops"] = {"float32": gemm.gflops_fp32, "bfloat16": gemm.gflops_bf16}
    torch.set_num_threads(args.threads)
    out["score_reference_fp32"] = score_reference(model, tokenizer, text[: out["score"]["chars"]],
                                                  scale.config.block_size)
    params, start_id = SAMPLING_PRESETS[SamplingPreset.BALANCED], tokenizer.encode("\n")[0]
    for streams in scale.reference_streams:
        out[f"kv_reference_{streams}"] = kv_reference(model, streams, scale.new_tokens, params, start_id,
                                                      repeats=1 if args.quick or args.smoke else 2)
    out["reference"] = reference(model, tokenizer, scale.new_tokens)
    return out


def targets(out: dict[str, Any], scale: Scale) -> list[tuple[str, float, float]]:
    """Issue 13/15's targets as (name, measured, goal): ratios of figures from this same run."""
    big, one, many, http = (scale.streams[-1], scale.reference_streams[0], scale.reference_streams[-1],
                            scale.http_streams[-1])
    single, grpc_many = out["single"]["tok_s"], out[f"streams_{many}"]["tok_s"]
    return [("gRPC single / lean KV loop single (>= 1.0)", single / out[f"kv_reference_{one}"]["tok_s"], 1.0),
            (f"gRPC {many} / lean KV loop {many} (>= 1.3)", grpc_many / out[f"kv_reference_{many}"]["tok_s"], 1.3),
            (f"HTTP {http} / gRPC {http} (>= 0.85)", out[f"http_streams_{http}"]["tok_s"]
             / out[f"streams_{http}"]["tok_s"], 0.85),
            (f"gRPC {big} streams TTFT p99 s (< 1.0)", out[f"streams_{big}"]["ttft_p99_ms"] / 1e3, 1.0),
            ("Score / Score's computation in float32 (>= 2.0)", out["score"]["chars_s"]
             / out["score_reference_fp32"]["chars_s"], 2.0),
            (f"gRPC {many} constrained / gRPC {many} (>= 0.9)", out[f"constrained_streams_{many}"]["tok_s"]
             / grpc_many, 0.9)]


def describe_serving(serving: dict[str, Any]) -> str:
    """The server's choices (served_choices) in words."""
    weights = f"{serving['weights']} weights"
    if serving["narrow_decode_from"] > 1:
        weights += f" from a decode batch of {serving['narrow_decode_from']} (float32 below)"
    threads = describe_decode_threads(serving["parallel_decode_from"], serving["split_decode_from"])
    runner = f", ggml for batches up to {serving['ggml_decode_up_to']}" if serving.get("ggml_decode_up_to") else ""
    return f"{weights}, {serving['kv_cache']} KV cache, {threads}{runner}"


def print_table(out: dict[str, Any], scale: Scale, load: tuple[float, ...]) -> None:
    ref = out["reference"]
    rows = [("notebook loop (no cache, 1 at a time)", f"{ref['tok_s']:8.1f} tok/s", "", "",
             f"{ref['tok_per_cpu_s']:7.0f}", "")]
    for streams in scale.reference_streams:
        r = out[f"kv_reference_{streams}"]
        label = f"lean KV loop, {streams} stream{'s' if streams > 1 else ''} ({r['best']})"
        rows.append((label, f"{r['tok_s']:8.1f} tok/s",
                     f"fp32 {r['float32_tok_s']:.0f} bf16 {r['bfloat16_tok_s']:.0f}", "", "", ""))
    stream_rows = [("single", "gRPC single stream")] + [(f"streams_{k}", f"gRPC {k} streams") for k in scale.streams]
    many = scale.reference_streams[-1]
    stream_rows.append((f"constrained_streams_{many}", f"gRPC {many} streams, each a regex"))
    stream_rows += [(f"http_streams_{k}", f"HTTP {k} stream{'s' if k > 1 else ''}") for k in scale.http_streams]
    for key, label in stream_rows:
        r = out[key]
        rows.append((label, f"{r['tok_s']:8.1f} tok/s",
                     f"TTFT p50 {r['ttft_p50_ms']:7.1f} p99 {r['ttft_p99_ms']:7.1f} ms",
                     f"ITL p50 {r['itl_p50_ms']:5.2f} p99 {r['itl_p99_ms']:6.2f} ms",
                     f"{r['tok_per_server_cpu_s']:7.0f}", f"{r['server_cores']:.2f} / {r['client_cores']:.2f}"))
    for key, label in (("score", "Score, default stride"), ("score_reference_fp32", "Score's computation in float32"),
                       ("score_stride_half", "Score, half stride"),
                       ("score_short_texts", "Score, concurrent block-long texts")):
        rows.append((label, f"{out[key]['chars_s']:8.0f} chars/s", "", "", "", ""))
    gemm, serving = out["gemm_gflops"], out["serving"]
    print(f"\nload average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; GEMM peaks: fp32 "
          f"{gemm['float32']:.0f}, bf16 {gemm['bfloat16']:.0f} GFLOP/s")
    print(f"server's measured choices: {describe_serving(serving)}")
    print(f"{'':<40} {'throughput':<16} {'':<32} {'':<28} {'tok/server CPU-s':>16}  cores server / client")
    for row in rows:
        print(f"{row[0]:<40} {row[1]:<16} {row[2]:<32} {row[3]:<28} {row[4]:>16}  {row[5]}")
    print()
    for name, measured, goal in out["targets"]:
        print(f"{name:<48} {measured:7.2f}  goal {goal}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer single-stream rounds, shorter Score texts")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, few characters and streams: checks "
                        "the benchmark runs (well under a minute), measures nothing")
    parser.add_argument("--threads", type=int, default=default_torch_threads(),
                        help="torch threads of the server and the reference (default: the server's default)")
    parser.add_argument("--kv-cache-dtype", default="auto", help="server KV cache dtype (auto, bfloat16, ...)")
    parser.add_argument("--decode-runner", default="auto", choices=("auto", "torch", "ggml"),
                        help="server decode runner (auto: measured per batch size)")
    args = parser.parse_args()
    scale = SMOKE if args.smoke else FULL
    out, load = run_in_tempdir(lambda tmp: run(args, scale, tmp))
    out["targets"] = targets(out, scale)
    out["machine"] = run_facts(args, load)
    print_table(out, scale, load)
    print(f"\nwrote {write_results('inference', out)}")


if __name__ == "__main__":
    main()
