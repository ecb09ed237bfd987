"""Client-side measurement shared by the serving benchmarks: per-stream timers, the one reader of OpenAI-style
/v1/completions server-sent events (chargpt's and llama-server's), rounds of concurrent streams, CPU time, and
the run's facts and results file."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import torch

RESULTS = Path(__file__).resolve().parent / "results"


class Timer:
    """Client-side timings of one streamed generation: TTFT, per-character gaps, total."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.ttft, self.gaps, self.chars = 0.0, [], 0  # type: float, list[float], int

    def received(self, n: int) -> None:
        now = time.perf_counter()
        if n and not self.chars:
            self.ttft = now - self.start
            self.gaps += [0.0] * (n - 1)  # characters that arrived together
        elif n:
            self.gaps += [(now - self.last) / n] * n  # a coalesced message: its gap shared by its characters
        self.chars += n
        self.last = now

    def result(self) -> dict[str, Any]:
        return {"tokens": self.chars, "ttft": self.ttft, "gaps": self.gaps, "total": time.perf_counter() - self.start}


def http_session(base_url: str) -> aiohttp.ClientSession:
    """The benchmarks' HTTP client: aiohttp (a C parser, about a third of httpx's CPU per streamed event, which on
    a 2-core host is CPU the server under test loses) with a new connection per request, for every server alike:
    a reused one races the server's own keep-alive limits (uvicorn's 5 s idle timeout; cpp-httplib closes after
    100 requests on one connection), which shows up as a disconnect in the middle of a run."""
    return aiohttp.ClientSession(base_url, connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=600))


async def _sse_lines(http: httpx.AsyncClient | aiohttp.ClientSession, body: dict[str, Any]) -> AsyncIterator[bytes]:
    """The lines of a streamed /v1/completions response (an httpx client: bench.inference's until it moves to
    http_session)."""
    if isinstance(http, aiohttp.ClientSession):
        async with http.post("/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.content:
                yield line
        return
    async with http.stream("POST", "/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        async for text in response.aiter_lines():
            yield text.encode()


async def sse_completion(http: httpx.AsyncClient | aiohttp.ClientSession, body: dict[str, Any]) -> dict[str, Any]:
    """POST `body` (stream: true) to /v1/completions and time the text of its events; the result's "text" is the
    generated text. Every OpenAI-style server goes through this one reader, so they are timed alike."""
    timer, pieces = Timer(), []
    async for line in _sse_lines(http, body):
        if line.startswith(b"data: {"):
            texts = [c["text"] for c in json.loads(line[6:])["choices"]]
            timer.received(sum(len(t) for t in texts))
            pieces += texts
    return {**timer.result(), "text": "".join(pieces)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc; 0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


@dataclass
class Tally:
    """Rounds of one row added up: every stream's timings, the wall time, the server's and this client's CPU time."""

    results: list[dict[str, Any]] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    client_cpu: float = 0.0

    def add(self, results: list[dict[str, Any]], wall: float, cpu: float, client_cpu: float) -> None:
        self.results += results
        self.wall, self.cpu, self.client_cpu = self.wall + wall, self.cpu + cpu, self.client_cpu + client_cpu

    def summary(self, streams: int) -> dict[str, Any]:
        """Aggregate throughput, plus tokens per CPU-second of the server (a figure other load barely moves) and
        the cores the server and this client (the load generator, on the same host) kept busy."""
        gaps = sorted(g for res in self.results for g in res["gaps"])
        ttfts = sorted(res["ttft"] for res in self.results)
        tokens, wall, cpu = sum(res["tokens"] for res in self.results), self.wall, self.cpu
        return {"streams": streams, "tok_s": tokens / wall, "tokens": tokens, "seconds": wall,
                "tok_per_server_cpu_s": tokens / cpu if cpu else 0.0, "server_cores": cpu / wall,
                "client_cores": self.client_cpu / wall, "ttft_p50_ms": 1e3 * pct(ttfts, 50),
                "ttft_p99_ms": 1e3 * pct(ttfts, 99), "itl_p50_ms": 1e3 * pct(gaps, 50),
                "itl_p99_ms": 1e3 * pct(gaps, 99)}


async def timed_round(stream: Callable[[int], Awaitable[dict[str, Any]]], streams: int, first_seed: int,
                      server_cpu: Callable[[], float], tally: Tally) -> None:
    """`streams` concurrent streams (seeds first_seed, first_seed + 1, ...) added to `tally`."""
    start, cpu, client_cpu = time.perf_counter(), server_cpu(), time.process_time()
    results = await asyncio.gather(*[stream(first_seed + i) for i in range(streams)])
    tally.add(list(results), time.perf_counter() - start, server_cpu() - cpu, time.process_time() - client_cpu)


async def concurrent(stream: Callable[[int], Awaitable[dict[str, Any]]], streams: int, rounds: int,
                     pid: int) -> dict[str, Any]:
    """`rounds` rounds of `streams` concurrent streams against the server process `pid`, summarised."""
    tally = Tally()
    for r in range(rounds):
        await timed_round(stream, streams, 1000 * r, lambda: cpu_seconds(pid), tally)
    return tally.summary(streams)


def run_facts(args: argparse.Namespace, load_before: tuple[float, ...]) -> dict[str, Any]:
    """The host, the versions and the run's settings, for the results file."""
    return {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "threads": args.threads, "kv_cache_dtype": args.kv_cache_dtype, "load_before": load_before,
            "load_after": os.getloadavg(), "quick": args.quick, "smoke": args.smoke,
            "time": datetime.now(UTC).isoformat()}


def write_results(kind: str, out: dict[str, Any]) -> Path:
    """bench/results/<kind>-<UTC time>.json"""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(out, indent=2, default=float))
    return path


def run_in_tempdir(run: Callable[[Path], Coroutine[Any, Any, dict[str, Any]]]
                   ) -> tuple[dict[str, Any], tuple[float, ...]]:
    """The benchmark `run(directory)` in a temporary directory, and the host's load average before it."""
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(run(Path(tmp))), load
