"""Serving peers beside chargpt on the same weights (issue 25): llama.cpp's llama-server, CTranslate2 and transformers.

    python -m bench.peers [--quick | --smoke] [--threads N] [--skip PEER ...]

bench.inference's model (6 layers, 6 heads, 384 wide, block 256, random init, tiny-shakespeare's 65 characters) is
exported with chargpt's own exporter (chargpt.formats: GGUF f32 for llama-server, Hugging Face GPT-2 for
transformers, converted from that to CTranslate2). Every stream continues "\\n" by 255 characters, streamed, with
the balanced sampling (temperature 0.8, top-k 40, nothing else): chargpt over gRPC and over HTTP (one server
subprocess, as bench.inference runs it), llama-server (continuous batching, one slot per stream) read through the
same SSE client code as chargpt's HTTP, CTranslate2 float32 and transformers in this process (marked in-process:
no server or protocol in their figures). Rounds are interleaved (every peer at every stream count, then again), so
a host's drift reaches every peer alike. A peer that is not installed or built is a row saying so.
--smoke runs a tiny model with few characters in seconds: it checks the benchmark works, not how fast anything is.
--skip leaves optional peers out (their rows say so), e.g. `--quick --skip ctranslate2 transformers` for chargpt's
HTTP against llama-server in a few minutes.
"""

from __future__ import annotations

import argparse
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import torch

from bench import inference
from bench.inference_server import MODEL, corpus_text, write_model
from bench.peer_report import LABELS, Peer, Scale, parity, peer_rows, print_report, targets
from bench.peer_servers import llama_server_binary, start_chargpt, start_llama_server
from bench.serving_common import Tally, run_facts, run_in_tempdir, write_results
from chargpt.core.measurements import measure_gemm_peak
from chargpt.formats import export_checkpoint
from inference_service.server import default_torch_threads

OPTIONAL = ("llama_server", "ctranslate2", "transformers")
FULL = Scale(inference.FULL.config, inference.NEW_TOKENS, (1, 64), 256, 100)
SMOKE = Scale(inference.SMOKE.config, 31, (1, 4), 8, 24)


class PeerMissing(Exception):
    """The peer cannot run here (not installed, not built); its row says why."""


async def start_optional(name: str, args: argparse.Namespace, scale: Scale, work: Path, stack: AsyncExitStack
                         ) -> Peer:
    """llama-server, CTranslate2 or transformers on chargpt's export of the benchmark model."""
    checkpoint = work / "models" / MODEL
    if name == "llama_server":
        binary, why = llama_server_binary()
        if binary is None:
            raise PeerMissing(why)
        gguf = export_checkpoint(checkpoint, "gguf", work / "gguf", gguf_types=("f32",)) / "model-f32.gguf"
        slots = max(scale.streams)
        return await start_llama_server(binary, gguf, scale.new_tokens, slots, slots * scale.config.block_size,
                                        args.threads, stack)
    hf = work / "hf"
    if not hf.is_dir():
        export_checkpoint(checkpoint, "hf", hf)
    from bench.peer_inprocess import CTranslate2Peer, TransformersPeer, convert_to_ctranslate2

    if name == "ctranslate2":
        return CTranslate2Peer(convert_to_ctranslate2(hf, work / "ct2"), args.threads, scale.new_tokens)
    return TransformersPeer(hf, args.threads, scale.new_tokens)


async def start_peers(args: argparse.Namespace, scale: Scale, work: Path, stack: AsyncExitStack
                      ) -> tuple[list[Peer], dict[str, str], dict[str, Any]]:
    """The peers that run here (chargpt's two first), why the others do not, and chargpt's serving choices."""
    grpc_peer, http_peer, serving = await start_chargpt(args, work / "models", scale.new_tokens, stack)
    peers: list[Peer] = [grpc_peer, http_peer]
    missing = {}
    for name in OPTIONAL:
        if name in args.skip:
            missing[name] = "skipped (--skip)"
            continue
        try:
            peers.append(await start_optional(name, args, scale, work, stack))
        except PeerMissing as exc:
            missing[name] = str(exc)
        except ModuleNotFoundError as exc:  # the peers' packages come with the dev dependencies
            missing[name] = f"not installed: {exc.name} (pip install -e '.[dev]')"
        except Exception as exc:  # a peer that fails to start is reported, never the benchmark's failure
            missing[name] = f"could not start: {type(exc).__name__}: {exc}"
    return peers, missing, serving


async def measure(peers: list[Peer], scale: Scale, rounds: int, singles: int
                  ) -> tuple[dict[str, dict[int, Tally]], Tally]:
    """Interleaved rounds: each peer at each stream count (a single stream `singles` times), then chargpt gRPC's
    many-stream row; every peer warmed up first."""
    tallies = {peer.name: {streams: Tally() for streams in scale.streams} for peer in peers}
    many = Tally()
    for peer in peers:
        await peer.run_round(1, 0, Tally())
    for r in range(rounds):
        for peer in peers:
            for streams in scale.streams:
                for i in range(singles if streams == 1 else 1):
                    await peer.run_round(streams, 10_000 * r + 1000 * i, tallies[peer.name][streams])
        await peers[0].run_round(scale.many, 10_000 * r, many)
    return tallies, many


async def run(args: argparse.Namespace, scale: Scale, work: Path) -> dict[str, Any]:
    text = corpus_text()
    write_model(work / "models", text, scale.config)
    torch.set_num_threads(args.threads)
    gemm = measure_gemm_peak()
    out: dict[str, Any] = {"gemm_gflops": {"float32": gemm.gflops_fp32, "bfloat16": gemm.gflops_bf16}}
    rounds, singles = (1, 1) if args.smoke else (1, 2) if args.quick else (3, 3)
    async with AsyncExitStack() as stack:
        peers, missing, out["serving"] = await start_peers(args, scale, work, stack)
        tallies, many = await measure(peers, scale, rounds, singles)
        out["parity"] = await parity(peers, scale.parity_chars)
    out["rows"] = peer_rows(peers, missing, tallies, many, scale)
    out["targets"] = targets(out["rows"], scale)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round, fewer single streams")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, few characters and streams: checks "
                        "the benchmark runs (seconds), measures nothing")
    parser.add_argument("--threads", type=int, default=default_torch_threads(),
                        help="threads of every peer: chargpt's torch threads, llama-server's -t, CTranslate2's "
                        "intra_threads, transformers' torch threads (default: chargpt server's default)")
    parser.add_argument("--kv-cache-dtype", default="auto", help="chargpt server's KV cache dtype")
    parser.add_argument("--decode-runner", default="auto", choices=("auto", "torch", "ggml"),
                        help="chargpt server's decode runner (auto: measured per batch size)")
    parser.add_argument("--skip", nargs="+", choices=OPTIONAL, default=[], help="optional peers not to run")
    args = parser.parse_args()
    scale = SMOKE if args.smoke else FULL
    out, load = run_in_tempdir(lambda tmp: run(args, scale, tmp))
    out["machine"] = {**run_facts(args, load), "peers": LABELS}
    print_report(out, scale)
    print(f"\nwrote {write_results('peers', out)}")


if __name__ == "__main__":
    main()
