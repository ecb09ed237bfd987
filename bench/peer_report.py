"""bench.peers' rows, ratios against llama-server, greedy parity, issue 25's targets and the printed table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from bench.inference import describe_serving
from bench.serving_common import Tally
from chargpt.core.config import ModelConfig

LABELS = {"chargpt_grpc": "chargpt gRPC", "chargpt_http": "chargpt HTTP", "llama_server": "llama-server",
          "ctranslate2": "CTranslate2 fp32, in-process", "transformers": "transformers, in-process"}
IN_PROCESS = ("ctranslate2", "transformers")
REFERENCE = "llama_server"  # the ratios' denominator
PARITY_PROMPT = "ROMEO:\n"


@dataclass(frozen=True)
class Scale:
    """How big a run is: the real benchmark, or a smoke test of the benchmark itself."""

    config: ModelConfig
    new_tokens: int
    streams: tuple[int, ...]  # every peer's rows: a single stream, then many
    many: int  # chargpt gRPC's TTFT-under-load row
    parity_chars: int


class Peer(Protocol):
    """One engine of the comparison: rounds of concurrent streams, and a greedy continuation."""

    name: str
    in_process: bool

    async def run_round(self, streams: int, first_seed: int, tally: Tally) -> None: ...

    async def greedy(self, prompt: str, chars: int) -> str: ...


def summary(tally: Tally, streams: int, new_tokens: int) -> dict[str, Any]:
    """The row's figures, and how many of its streams ended short of `new_tokens` characters."""
    return {**tally.summary(streams), "short_streams": sum(r["tokens"] < new_tokens for r in tally.results)}


def peer_rows(peers: list[Peer], missing: dict[str, str], tallies: dict[str, dict[int, Tally]], many: Tally,
              scale: Scale) -> dict[str, Any]:
    """Every peer's row (measured, or why not) in LABELS' order, with ratios to llama-server's where it ran."""
    rows: dict[str, Any] = {}
    for peer in peers:
        levels = {str(k): summary(t, k, scale.new_tokens) for k, t in tallies[peer.name].items()}
        rows[peer.name] = {"label": LABELS[peer.name], "available": True, "in_process": peer.in_process,
                           "streams": levels}
    rows["chargpt_grpc"]["streams"][str(scale.many)] = summary(many, scale.many, scale.new_tokens)
    for name, reason in missing.items():
        rows[name] = {"label": LABELS[name], "available": False, "in_process": name in IN_PROCESS, "reason": reason,
                      "streams": {}}
    reference = rows[REFERENCE]["streams"]
    for row in rows.values():
        for level, figures in row["streams"].items():
            theirs = reference.get(level)
            if theirs and row is not rows[REFERENCE]:
                figures["vs_llama_server"] = {key: ratio(figures[key], theirs[key])
                                              for key in ("tok_s", "ttft_p50_ms", "ttft_p99_ms")}
    return {name: rows[name] for name in LABELS if name in rows}


def ratio(ours: float, theirs: float) -> float | None:
    return ours / theirs if theirs else None


def first_difference(reference: str, text: str) -> int | None:
    """The index of the first character where `text` departs from `reference`; None where they are equal."""
    for i, (a, b) in enumerate(zip(reference, text, strict=False)):
        if a != b:
            return i
    return None if len(reference) == len(text) else min(len(reference), len(text))


async def parity(peers: list[Peer], chars: int) -> dict[str, Any]:
    """Each peer's greedy (temperature 0) continuation of one prompt against chargpt gRPC's."""
    texts = {peer.name: await peer.greedy(PARITY_PROMPT, chars) for peer in peers}
    reference = texts[peers[0].name]
    return {"prompt": PARITY_PROMPT, "chars": chars, "reference": peers[0].name, "texts": texts,
            "first_difference": {name: first_difference(reference, text) for name, text in texts.items()}}


def targets(rows: dict[str, Any], scale: Scale) -> list[dict[str, Any]]:
    """Issue 25's targets from this run's figures: HTTP against llama-server at 1 and many streams, and chargpt's
    TTFT p99 at `scale.many` streams."""
    one, many = (str(k) for k in (scale.streams[0], scale.streams[-1]))
    http = rows["chargpt_http"]["streams"]

    def vs(level: str, key: str) -> float | None:
        value: float | None = http[level].get("vs_llama_server", {}).get(key)
        return value

    measured: list[tuple[str, float | None, str, float]] = [
        (f"{one} stream HTTP tok/s / llama-server's", vs(one, "tok_s"), ">=", 1.0),
        (f"{one} stream HTTP TTFT p50 / llama-server's", vs(one, "ttft_p50_ms"), "<=", 1.0),
        (f"{many} streams HTTP tok/s / llama-server's", vs(many, "tok_s"), ">=", 1.5),
        (f"{many} streams HTTP TTFT p99 / llama-server's", vs(many, "ttft_p99_ms"), "<=", 0.5),
        (f"{scale.many} streams gRPC TTFT p99, s", rows["chargpt_grpc"]["streams"][str(scale.many)]["ttft_p99_ms"]
         / 1e3, "<", 1.0)]
    return [{"name": name, "measured": value, "goal": f"{op} {goal}", "status": status(value, op, goal)}
            for name, value, op, goal in measured]


def status(value: float | None, op: str, goal: float) -> str:
    if value is None:
        return "n/a (llama-server not measured)"
    met = value >= goal if op == ">=" else value <= goal if op == "<=" else value < goal
    return "PASS" if met else "MISS"


def print_report(out: dict[str, Any], scale: Scale) -> None:
    gemm, machine = out["gemm_gflops"], out["machine"]
    print(f"\nload average before the run: {' '.join(f'{x:.2f}' for x in machine['load_before'])}; "
          f"GEMM peaks: fp32 {gemm['float32']:.0f}, bf16 {gemm['bfloat16']:.0f} GFLOP/s; {machine['threads']} "
          f"threads per peer; {scale.new_tokens} characters per stream")
    print(f"chargpt server's measured choices: {describe_serving(out['serving'])}")
    print(f"{'':<30} {'streams':>7} {'tok/s':>9}  {'TTFT p50 / p99 ms':<20} {'cores':>5}  vs llama-server")
    for row in out["rows"].values():
        if not row["available"]:
            print(f"{row['label']}: {row['reason']}")
        for level, r in row["streams"].items():
            versus = r.get("vs_llama_server")
            ratios = (f"{versus['tok_s']:.2f}x tok/s, TTFT p99 {versus['ttft_p99_ms']:.2f}x"
                      if versus and versus["tok_s"] and versus["ttft_p99_ms"] else "")
            short = f"  ({r['short_streams']} streams short of {scale.new_tokens})" if r["short_streams"] else ""
            print(f"{row['label']:<30} {level:>7} {r['tok_s']:9.1f}  {r['ttft_p50_ms']:7.1f} / {r['ttft_p99_ms']:7.1f}"
                  f"    {r['server_cores']:5.2f}  {ratios}{short}")
    check = out["parity"]
    print(f"\ngreedy parity, {check['chars']} characters after {check['prompt']!r}, against {check['reference']}:")
    for name, at in check["first_difference"].items():
        print(f"  {LABELS[name]:<30} {'equal' if at is None else f'first difference at character {at}'}")
    print()
    for target in out["targets"]:
        value = "-" if target["measured"] is None else f"{target['measured']:.2f}"
        print(f"{target['name']:<44} {value:>7}  goal {target['goal']:<7} {target['status']}")
