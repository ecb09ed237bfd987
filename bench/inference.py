"""Inference benchmark over gRPC on loopback: single-stream and concurrent decode, TTFT/ITL, Score throughput.

    python -m bench.inference [--quick] [--threads N]

The server runs as a subprocess (its own interpreter, as in production) with the notebook's model
(6 layers, 6 heads, 384 wide, block 256, ~10.7M parameters, random init, tiny-shakespeare's 65 characters);
every request generates 255 characters with the BALANCED preset. The reference is the notebook's loop
(chargpt.core.sampling.generate: full recompute, no cache, one request at a time) run in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chargpt.core.checkpoint import save_checkpoint
from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT
from chargpt.core.sampling import SAMPLING_PRESETS, SamplingPreset, generate, make_generator
from chargpt.core.tokenizer import CharTokenizer
from chargpt.v1 import inference_pb2, inference_pb2_grpc
from inference_service.server import default_torch_threads

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("CHARGPT_SHAKESPEARE", ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
NEW_TOKENS = 255
MODEL = "bench"
BLOCK = ModelConfig(vocab_size=65).block_size  # the notebook's context window (the config's default)
TARGETS = {"single_stream_tok_s": 200, "streams_16_tok_s": 1000, "streams_64_tok_s": 1800, "score_chars_s": 10_000}


def corpus_text() -> str:
    if CORPUS.is_file():
        return CORPUS.read_text(encoding="utf-8")
    # Fallback with the same 65-character vocabulary size when the corpus is absent.
    chars = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return (chars * 2000)[:100_000]


def write_model(models_dir: Path, text: str) -> GPT:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.from_text(text)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, dropout=0.0)).eval()
    save_checkpoint(models_dir / MODEL, model, tokenizer)
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(models_dir: Path, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "inference_service.server", "--port", str(port), "--models-dir",
               str(models_dir), "--preload", f"{MODEL}={MODEL}", "--torch-threads", str(args.threads),
               "--kv-cache-dtype", args.kv_cache_dtype,
               "--device", "cpu", "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(command, cwd=ROOT, env=env)


async def wait_ready(channel: grpc.aio.Channel, timeout: float = 120.0) -> None:
    stub, deadline = health_pb2_grpc.HealthStub(channel), time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=MODEL), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the inference server did not become ready")


async def one_stream(stub: inference_pb2_grpc.InferenceServiceStub, seed: int) -> dict[str, Any]:
    """Client-side timings of one streamed generation: TTFT, per-character gaps, total."""
    request = inference_pb2.GenerateRequest(model=MODEL, prompt="\n", max_new_tokens=NEW_TOKENS, seed=seed,
                                            preset=inference_pb2.SAMPLING_PRESET_BALANCED)
    start = time.perf_counter()
    last, ttft, gaps, chars = start, 0.0, [], 0
    async for message in stub.GenerateStream(request, timeout=600):
        now = time.perf_counter()
        n = len(message.text)
        if n and not chars:
            ttft = now - start
            gaps += [0.0] * (n - 1)  # characters that arrived together
        elif n:
            gaps += [(now - last) / n] * n  # a coalesced message: its gap shared by its characters
        chars += n
        last = now
    return {"tokens": chars, "ttft": ttft, "gaps": gaps, "total": time.perf_counter() - start}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc; 0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def concurrent(stub: inference_pb2_grpc.InferenceServiceStub, streams: int, rounds: int,
                     pid: int) -> dict[str, Any]:
    """Aggregate throughput, plus tokens per CPU-second of the server: a figure other load barely moves."""
    results, wall, cpu = [], 0.0, cpu_seconds(pid)
    for r in range(rounds):
        start = time.perf_counter()
        results += await asyncio.gather(*[one_stream(stub, seed=1000 * r + i) for i in range(streams)])
        wall += time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu
    gaps = sorted(g for res in results for g in res["gaps"])
    ttfts = sorted(res["ttft"] for res in results)
    tokens = sum(res["tokens"] for res in results)
    return {"streams": streams, "tok_s": tokens / wall, "tokens": tokens, "seconds": wall,
            "tok_per_server_cpu_s": tokens / cpu if cpu else 0.0,
            "ttft_p50_ms": 1e3 * pct(ttfts, 50), "ttft_p99_ms": 1e3 * pct(ttfts, 99),
            "itl_p50_ms": 1e3 * pct(gaps, 50), "itl_p99_ms": 1e3 * pct(gaps, 99)}


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


async def score(stub: inference_pb2_grpc.InferenceServiceStub, text: str, stride: int) -> dict[str, Any]:
    start = time.perf_counter()
    reply = await stub.Score(inference_pb2.ScoreRequest(model=MODEL, text=text, stride=stride), timeout=600)
    seconds = time.perf_counter() - start
    return {"chars": len(text), "stride": stride or BLOCK, "chars_s": len(text) / seconds, "seconds": seconds,
            "bits_per_char": reply.bits_per_char}


def reference(model: GPT, tokenizer: CharTokenizer, tokens: int) -> dict[str, Any]:
    """The notebook's loop: full recompute, no cache, one request at a time (in this process)."""
    idx = torch.tensor([tokenizer.encode("\n")])
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        generate(model, idx, tokens, SAMPLING_PRESETS[SamplingPreset.BALANCED], make_generator(0))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"tok_s": tokens / seconds, "tokens": tokens, "seconds": seconds, "tok_per_cpu_s": tokens / cpu}


async def run(args: argparse.Namespace, models_dir: Path) -> dict[str, Any]:
    text = corpus_text()
    model = write_model(models_dir, text)
    tokenizer = CharTokenizer.from_text(text)
    port = free_port()
    server = start_server(models_dir, port, args)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                             options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
            await wait_ready(channel)
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            await one_stream(stub, seed=0)  # warm-up
            out: dict[str, Any] = {"single": await concurrent(stub, 1, 2 if args.quick else 5, server.pid)}
            for streams in (16, 64):
                out[f"streams_{streams}"] = await concurrent(stub, streams, 1, server.pid)
            score_text = text[: 20_000 if args.quick else 100_000]
            out["score"] = await score(stub, score_text, 0)
            out["score_stride_half"] = await score(stub, score_text, BLOCK // 2)
            short = [text[i * 256:(i + 1) * 256] for i in range(32 if args.quick else 128)]
            start = time.perf_counter()
            await asyncio.gather(*[stub.Score(inference_pb2.ScoreRequest(model=MODEL, text=t)) for t in short])
            out["score_short_texts"] = {"texts": len(short), "chars_s": 256 * len(short) / (time.perf_counter()
                                                                                          - start)}
    finally:
        server.terminate()
        server.wait(timeout=30)
    torch.set_num_threads(args.threads)
    out["reference"] = reference(model, tokenizer, NEW_TOKENS)
    return out


def print_table(out: dict[str, Any], load: tuple[float, float, float]) -> None:
    ref = out["reference"]["tok_s"]
    ref_cpu = out["reference"]["tok_per_cpu_s"]
    rows = [("naive reference (no cache, 1 at a time)", f"{ref:8.1f} tok/s", "", "", f"{ref_cpu:7.0f}")]
    for key, label in (("single", "single stream"), ("streams_16", "16 concurrent streams"),
                       ("streams_64", "64 concurrent streams")):
        r = out[key]
        target = TARGETS["single_stream_tok_s" if key == "single" else f"{key}_tok_s"]
        rows.append((f"{label} (target {target})", f"{r['tok_s']:8.1f} tok/s  x{r['tok_s'] / ref:5.1f}",
                     f"TTFT p50 {r['ttft_p50_ms']:6.1f} p99 {r['ttft_p99_ms']:6.1f} ms",
                     f"ITL p50 {r['itl_p50_ms']:5.2f} p99 {r['itl_p99_ms']:6.2f} ms",
                     f"{r['tok_per_server_cpu_s']:7.0f}"))
    for key, label in (("score", f"Score, default stride {BLOCK}"),
                       ("score_stride_half", f"Score, stride {BLOCK // 2}"),
                       ("score_short_texts", "Score, concurrent 256-char texts")):
        rows.append((f"{label} (target 10000)", f"{out[key]['chars_s']:8.0f} chars/s", "", "", ""))
    print(f"\nload average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  "
          f"(2 shared cores: figures are noisy)")
    print(f"{'':<52} {'throughput':<24} {'':<30} {'':<28} tok per server CPU-s")
    for row in rows:
        print(f"{row[0]:<52} {row[1]:<24} {row[2]:<30} {row[3]:<28} {row[4]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer single-stream rounds, shorter Score texts")
    parser.add_argument("--threads", type=int, default=default_torch_threads(),
                        help="torch threads of the server and the reference (default: the server's default)")
    parser.add_argument("--kv-cache-dtype", default="auto", help="server KV cache dtype (auto, bfloat16, ...)")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = asyncio.run(run(args, Path(tmp)))
    out["machine"] = {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                      "threads": args.threads, "kv_cache_dtype": args.kv_cache_dtype,
                      "load_before": load, "load_after": os.getloadavg(),
                      "quick": args.quick, "time": datetime.now(UTC).isoformat()}
    print_table(out, load)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"inference-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(out, indent=2, default=float))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
