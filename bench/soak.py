"""Bounded soak: mixed generate/score/attention traffic against the inference service while the trainer trains.

    python -m bench.soak [--seconds 120] [--concurrency 8] [--tenants 3]

With --tenants N (the default, 3) the soak runs as N tenants with their own keys, one over its limits: see
bench/soak_tenants.py. --tenants 0 is the single-user soak described here.

Both services run as real subprocesses on loopback. The trainer trains a small model on the corpus for the whole
soak; the inference service loads the job's first checkpoint over DownloadCheckpoint, then `concurrency` clients
send a weighted mix (streamed generation 50%, score 30%, attention 20%) while one more client watches the job and
polls it. Every failed RPC, and every generation whose length or finish reason is wrong, is an error (target 0).
The reference is the same requests sent one at a time just before the soak (same run, same machine).
Prints a table and writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from bench.soak_services import ROOT, corpus_text, free_port, start, stop, wait_serving
from chargpt.v1 import common_pb2, inference_pb2, inference_pb2_grpc, trainer_pb2, trainer_pb2_grpc

SAMPLING_PRESETS = [number for number in inference_pb2.SamplingPreset.values() if number]  # every preset
MIX = {"generate": 0.5, "score": 0.3, "attention": 0.2}
BLOCK = 64


class Recorder:
    """Latencies and errors per kind of request."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    async def timed(self, kind: str, call: Callable[[], Awaitable[None]]) -> None:
        started = time.perf_counter()
        try:
            await call()
        except grpc.aio.AioRpcError as err:
            self.errors[kind][err.code().name] += 1
        except AssertionError as err:
            self.errors[kind][str(err) or "wrong result"] += 1
        else:
            self.latencies[kind].append(time.perf_counter() - started)


class Traffic:
    """The request kinds, each a coroutine that raises on a wrong answer."""

    def __init__(self, inference: inference_pb2_grpc.InferenceServiceStub, text: str, seed: int,
                 model: str = "soak") -> None:
        self.inference, self.text, self.rng, self.model = inference, text, random.Random(seed), model

    def _slice(self, length: int) -> str:
        start = self.rng.randrange(0, len(self.text) - length)
        return self.text[start:start + length]

    async def generate(self) -> None:
        tokens = self.rng.randint(16, 96)
        request = inference_pb2.GenerateRequest(model=self.model, prompt=self._slice(self.rng.randint(0, 40)),
                                                max_new_tokens=tokens, preset=self.rng.choice(SAMPLING_PRESETS),
                                                seed=self.rng.getrandbits(32))
        text, summary = "", None
        async for message in self.inference.GenerateStream(request, timeout=60):
            text += message.text
            if message.HasField("summary"):
                summary = message.summary
        assert summary is not None and summary.finish_reason == inference_pb2.FINISH_REASON_LENGTH, "no summary"
        assert len(text) == tokens, "wrong length"

    async def score(self) -> None:
        reply = await self.inference.Score(inference_pb2.ScoreRequest(model=self.model, text=self._slice(300)),
                                           timeout=60)
        assert reply.num_tokens == 299 and reply.perplexity > 1, "wrong score"

    async def attention(self) -> None:
        reply = await self.inference.GetAttention(inference_pb2.GetAttentionRequest(model=self.model,
                                                                                    text=self._slice(BLOCK)),
                                                  timeout=60)
        assert list(reply.weights.shape)[-1] == BLOCK, "wrong attention shape"

    def pick(self) -> Callable[[], Awaitable[None]]:
        kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        return getattr(self, kind)  # type: ignore[no-any-return]


async def prepare(trainer: trainer_pb2_grpc.TrainerServiceStub, inference: inference_pb2_grpc.InferenceServiceStub,
                  text: str, name: str = "soak", max_steps: int = 1_000_000) -> str:
    """Upload the corpus, start a job (long by default), load its first checkpoint as model `name`; the job id."""
    async def upload() -> AsyncIterator[trainer_pb2.UploadCorpusRequest]:
        yield trainer_pb2.UploadCorpusRequest(header=trainer_pb2.CorpusHeader(name=name))
        yield trainer_pb2.UploadCorpusRequest(data=text.encode())

    corpus = (await trainer.UploadCorpus(upload(), timeout=60)).corpus
    job = (await trainer.CreateTrainingJob(trainer_pb2.CreateTrainingJobRequest(
        corpus_id=corpus.corpus_id, display_name=name,
        model=trainer_pb2.ModelSpec(custom=common_pb2.ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK)),
        training=trainer_pb2.TrainingSpec(max_steps=max_steps, batch_size=8, eval_interval=0, sample_interval=0,
                                          checkpoint_interval=5),
        resources=trainer_pb2.ResourceSpec(device="cpu")), timeout=60)).job
    deadline = time.monotonic() + 180
    while not (await trainer.ListCheckpoints(trainer_pb2.ListCheckpointsRequest(job_id=job.job_id),
                                             timeout=10)).checkpoints:
        if time.monotonic() > deadline:
            raise TimeoutError("the job wrote no checkpoint")
        await asyncio.sleep(0.5)
    ref = inference_pb2.TrainerCheckpointRef(job_id=job.job_id, kind=common_pb2.CHECKPOINT_KIND_LATEST)
    await inference.LoadModel(inference_pb2.LoadModelRequest(name=name, trainer_checkpoint=ref), timeout=120)
    return str(job.job_id)


async def watch_trainer(trainer: trainer_pb2_grpc.TrainerServiceStub, job_id: str, recorder: Recorder,
                        until: float) -> int:
    """Follow the job's event stream and poll it once a second; returns the events seen."""
    events = 0

    async def follow() -> None:
        nonlocal events
        async for _ in trainer.WatchTrainingJob(trainer_pb2.WatchTrainingJobRequest(job_id=job_id)):
            events += 1

    follower = asyncio.ensure_future(follow())
    while time.monotonic() < until:
        await recorder.timed("trainer_poll", lambda: trainer.GetTrainingJob(
            trainer_pb2.GetTrainingJobRequest(job_id=job_id), timeout=10))
        await asyncio.sleep(1.0)
    follower.cancel()
    try:
        await follower
    except asyncio.CancelledError:
        pass
    except grpc.aio.AioRpcError as err:
        if err.code() is not grpc.StatusCode.CANCELLED:
            recorder.errors["trainer_watch"][err.code().name] += 1
    return events


async def soak(trainer: trainer_pb2_grpc.TrainerServiceStub, inference: inference_pb2_grpc.InferenceServiceStub,
               job_id: str, text: str, seconds: float, concurrency: int) -> tuple[Recorder, Recorder, int, float]:
    reference = Recorder()
    traffic = Traffic(inference, text, seed=0)
    for kind in MIX:
        for _ in range(5):
            await reference.timed(kind, getattr(traffic, kind))
    for _ in range(5):
        await reference.timed("trainer_poll", lambda: trainer.GetTrainingJob(
            trainer_pb2.GetTrainingJobRequest(job_id=job_id), timeout=10))
    recorder = Recorder()
    started = time.monotonic()
    until = started + seconds

    async def client(seed: int) -> None:
        mine = Traffic(inference, text, seed)
        while time.monotonic() < until:
            call = mine.pick()
            await recorder.timed(call.__name__, call)

    results = await asyncio.gather(watch_trainer(trainer, job_id, recorder, until),
                                   *(client(i + 1) for i in range(concurrency)))
    return reference, recorder, int(results[0] or 0), time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def summarise(reference: Recorder, recorder: Recorder, wall: float) -> dict[str, Any]:
    kinds = sorted(set(recorder.latencies) | set(recorder.errors))
    table = {}
    for kind in kinds:
        lat = recorder.latencies[kind]
        table[kind] = {"ok": len(lat), "errors": sum(recorder.errors[kind].values()),
                       "error_codes": dict(recorder.errors[kind]), "per_second": len(lat) / wall,
                       "p50_ms": percentile(lat, 0.5), "p90_ms": percentile(lat, 0.9),
                       "p99_ms": percentile(lat, 0.99), "max_ms": max(lat) * 1000 if lat else float("nan"),
                       "alone_p50_ms": percentile(reference.latencies.get(kind, []), 0.5)}
    return table


def print_table(table: dict[str, Any]) -> None:
    print(f"{'kind':14} {'ok':>6} {'errors':>6} {'per s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'alone p50':>9}")
    for kind, row in table.items():
        print(f"{kind:14} {row['ok']:6d} {row['errors']:6d} {row['per_second']:7.1f} {row['p50_ms']:8.1f} "
              f"{row['p90_ms']:8.1f} {row['p99_ms']:8.1f} {row['max_ms']:8.1f} {row['alone_p50_ms']:9.1f}")


async def run_soak(seconds: float, concurrency: int, workdir: Path) -> dict[str, Any]:
    """Start both services, soak, stop them (SIGTERM: exit code 0 expected); the report as a dict."""
    tport, iport = free_port(), free_port()
    trainer_proc = start("trainer_service.server", ["--port", str(tport), "--data-dir", str(workdir / "trainer"),
                                                    "--device", "cpu", "--builtin-corpora", "false",
                                                    "--event-poll-seconds", "0.2"], workdir / "trainer.log")
    inference_proc = start("inference_service.server", [
        "--port", str(iport), "--models-dir", str(workdir / "models"), "--device", "cpu", "--torch-threads", "1",
        "--trainer-address", f"127.0.0.1:{tport}"], workdir / "inference.log")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{tport}") as tch, \
                grpc.aio.insecure_channel(f"127.0.0.1:{iport}") as ich:
            await asyncio.gather(wait_serving(tch), wait_serving(ich))
            trainer, inference = trainer_pb2_grpc.TrainerServiceStub(tch), inference_pb2_grpc.InferenceServiceStub(ich)
            text = corpus_text()
            job_id = await prepare(trainer, inference, text)
            step_before = (await trainer.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id=job_id))).job.step
            reference, recorder, events, wall = await soak(trainer, inference, job_id, text, seconds, concurrency)
            job = (await trainer.CancelTrainingJob(trainer_pb2.CancelTrainingJobRequest(job_id=job_id),
                                                   timeout=60)).job
    finally:
        exit_codes = stop({"inference": inference_proc, "trainer": trainer_proc})
    table = summarise(reference, recorder, wall)
    errors = sum(row["errors"] for row in table.values()) + sum(code != 0 for code in exit_codes.values())
    return {"seconds": round(wall, 1), "concurrency": concurrency, "errors": errors, "kinds": table,
            "training": {"steps_during_soak": job.step - step_before, "events_watched": events},
            "exit_codes": exit_codes, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "time": datetime.now(UTC).isoformat(timespec="seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tenants", type=int, default=3, help="tenants sharing the deployment, the last one over "
                        "its limits (bench/soak_tenants.py); 0: the single-user soak without keys")
    args = parser.parse_args()
    if args.tenants:
        from bench.soak_tenants import main as tenants_main  # it builds on this module

        sys.exit(tenants_main(args.seconds, args.concurrency, args.tenants))
    with tempfile.TemporaryDirectory(prefix="chargpt-soak-") as tmp:
        report = asyncio.run(run_soak(args.seconds, args.concurrency, Path(tmp)))
    print_table(report["kinds"])
    print(f"errors: {report['errors']} (target 0); training: {report['training']['steps_during_soak']} steps and "
          f"{report['training']['events_watched']} events during the soak; exit codes {report['exit_codes']}")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "soak.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {results / 'soak.json'}")
    sys.exit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()
