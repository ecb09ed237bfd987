"""The soak as several tenants on one deployment, the last one deliberately over its inference limits.

    python -m bench.soak --tenants 3 [--seconds 120] [--concurrency 8]

Both services run as subprocesses with a keys file, a tenants file and an audit log. Each tenant, with its own key,
uploads a corpus, trains a short job and loads its model; then each sends the soak's mix plus OpenAI-HTTP
completions from `concurrency // tenants` (at least 2) clients for `seconds`. The last tenant's
generated_chars_per_minute and concurrent_streams are low. The run passes when the other tenants have no error and
no refusal, and the last one has refusals, every one well-formed (RESOURCE_EXHAUSTED with RetryInfo over gRPC, HTTP
429 with Retry-After; its clients wait as told) and no other error.
Prints a table per tenant and writes bench/results/soak_tenants.json.
"""

from __future__ import annotations

import asyncio
import json
import platform
import secrets
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
from chargpt_client.errors import retry_after

from bench import soak
from bench.grpc_key import bearer_key
from bench.soak_services import ROOT, corpus_text, free_port, start, stop, wait_serving
from chargpt.server.tenancy.keys import create_key
from chargpt.v1 import inference_pb2_grpc, trainer_pb2, trainer_pb2_grpc

TENANT_MIX = {"generate": 0.4, "completion": 0.2, "score": 0.25, "attention": 0.15}
OVER_LIMITS = {"generated_chars_per_minute": 1500, "concurrent_streams": 1}
MAX_WAIT = 2.0  # an over-limit client waits as told, but at most this long, so a short run still sees refusals


class HttpRefusal(Exception):
    """An HTTP answer other than 200: the status and its Retry-After header (None when absent)."""

    def __init__(self, status: int, retry_after_header: str | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.retry_after_header = status, retry_after_header


@dataclass
class Tally:
    """One tenant's requests: answered, refused as the contract says, refused badly, and other errors."""

    ok: int = 0
    refused: int = 0
    malformed: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def requests(self) -> int:
        return self.ok + self.refused + len(self.malformed) + sum(self.errors.values())

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "ok": self.ok, "refused": self.refused, "malformed": list(self.malformed),
                "errors": dict(self.errors)}

    def failure(self, exc: BaseException) -> float | None:
        """Count a failed request; the wait the server asked for when it was a well-formed refusal."""
        if isinstance(exc, grpc.aio.AioRpcError):
            if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.errors[exc.code().name] += 1
                return None
            return self._refusal(retry_after(exc), f"gRPC RESOURCE_EXHAUSTED without RetryInfo: {exc.details()}")
        if isinstance(exc, HttpRefusal):
            if exc.status != 429:
                self.errors[f"HTTP {exc.status}"] += 1
                return None
            return self._refusal(_seconds(exc.retry_after_header), "HTTP 429 without a numeric Retry-After: "
                                                                   f"{exc.retry_after_header!r}")
        self.errors[str(exc) or type(exc).__name__] += 1
        return None

    def _refusal(self, wait: float | None, problem: str) -> float | None:
        if wait is None or wait < 0:
            self.malformed.append(problem[:200])
            return None
        self.refused += 1
        return wait


def _seconds(header: str | None) -> float | None:
    """A Retry-After value in seconds: delay-seconds or an HTTP-date (RFC 9110 §10.2.3); None when invalid."""
    if header is None:
        return None
    if header.strip().isdigit():
        return float(header)
    try:
        return (parsedate_to_datetime(header) - datetime.now(UTC)).total_seconds()
    except (TypeError, ValueError):
        return None


def verdict(tallies: dict[str, Tally], over_limit: str) -> list[str]:
    """What makes the run fail (empty: it passes)."""
    problems = []
    for tenant, tally in tallies.items():
        if tally.errors or tally.malformed:
            problems.append(f"{tenant}: errors {dict(tally.errors)}, malformed refusals {tally.malformed[:3]}")
        if tenant != over_limit and tally.refused:
            problems.append(f"{tenant}: {tally.refused} refusals while within its limits")
        if tally.ok == 0:
            problems.append(f"{tenant}: no request answered")
    if not tallies.get(over_limit, Tally()).refused:
        problems.append(f"{over_limit}: over its limits but never refused (limits not enforced?)")
    return problems


class TenantTraffic(soak.Traffic):
    """The soak's requests as one tenant, plus completions over the OpenAI-compatible HTTP API."""

    def __init__(self, inference: inference_pb2_grpc.InferenceServiceStub, http: httpx.AsyncClient, text: str,
                 seed: int, model: str) -> None:
        super().__init__(inference, text, seed, model)
        self.http = http

    async def completion(self) -> None:
        tokens = self.rng.randint(16, 96)
        body = {"model": self.model, "prompt": self._slice(self.rng.randint(1, 40)), "max_tokens": tokens,
                "seed": self.rng.getrandbits(32)}
        reply = await self.http.post("/v1/completions", json=body)
        if reply.status_code != 200:
            raise HttpRefusal(reply.status_code, reply.headers.get("retry-after"))
        choice = reply.json()["choices"][0]
        assert choice["finish_reason"] == "length" and len(choice["text"]) == tokens, "wrong completion"

    def pick(self) -> Callable[[], Awaitable[None]]:
        kind = self.rng.choices(list(TENANT_MIX), weights=list(TENANT_MIX.values()))[0]
        return getattr(self, kind)  # type: ignore[no-any-return]


@dataclass
class Tenant:
    """One tenant's key, channels and results during the run."""

    name: str
    key: str
    trainer: trainer_pb2_grpc.TrainerServiceStub
    inference: inference_pb2_grpc.InferenceServiceStub
    http: httpx.AsyncClient
    recorder: soak.Recorder = field(default_factory=soak.Recorder)
    tally: Tally = field(default_factory=Tally)
    job_id: str = ""

    async def client(self, text: str, seed: int, until: float) -> None:
        traffic = TenantTraffic(self.inference, self.http, text, seed, model=f"soak-{self.name}")
        while time.monotonic() < until:
            call = traffic.pick()
            started = time.perf_counter()
            try:
                await call()
            except (grpc.aio.AioRpcError, HttpRefusal, AssertionError, httpx.HTTPError) as exc:
                wait = self.tally.failure(exc)
                if wait is not None:
                    await asyncio.sleep(min(wait, MAX_WAIT, max(0.0, until - time.monotonic())))
            else:
                self.tally.ok += 1
                self.recorder.latencies[call.__name__].append(time.perf_counter() - started)

    async def poll(self, until: float) -> None:
        """The tenant's own job, once a second: its trainer calls keep working during the soak."""
        while time.monotonic() < until:
            try:
                await self.trainer.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id=self.job_id), timeout=10)
                self.tally.ok += 1
            except grpc.aio.AioRpcError as exc:
                self.tally.failure(exc)
            await asyncio.sleep(1.0)


def write_config(workdir: Path, names: list[str]) -> dict[str, str]:
    """Keys for every tenant (member role) and a tenants file limiting the last one; the keys by tenant."""
    keys = {name: create_key(workdir / "keys.json", name, "member")[0] for name in names}
    limits = "\n".join(f"{name} = {value}" for name, value in OVER_LIMITS.items())
    (workdir / "tenants.toml").write_text(f"[tenants.{names[-1]}]\n{limits}\n", encoding="utf-8")
    return keys


def service_args(workdir: Path, ports: dict[str, int], admin_token: str) -> tuple[list[str], list[str]]:
    tenancy = ["--keys-file", str(workdir / "keys.json"), "--tenants-file", str(workdir / "tenants.toml")]
    trainer = ["--port", str(ports["trainer"]), "--data-dir", str(workdir / "trainer"), "--device", "cpu",
               "--builtin-corpora", "false", "--auth-token", admin_token, *tenancy,
               "--audit-log", str(workdir / "audit" / "trainer.jsonl")]
    inference = ["--port", str(ports["inference"]), "--http-port", str(ports["http"]), "--models-dir",
                 str(workdir / "models"), "--device", "cpu", "--torch-threads", "1", "--trainer-address",
                 f"127.0.0.1:{ports['trainer']}", "--trainer-auth-token", admin_token, *tenancy,
                 "--audit-log", str(workdir / "audit" / "inference.jsonl")]
    return trainer, inference


async def drive(tenants: list[Tenant], text: str, seconds: float, clients: int) -> float:
    """Each tenant trains and loads its own model, then the soak; the soak's wall time."""
    jobs = await asyncio.gather(*(soak.prepare(t.trainer, t.inference, text, name=f"soak-{t.name}", max_steps=10)
                                  for t in tenants))
    for tenant, job_id in zip(tenants, jobs, strict=True):
        tenant.job_id = job_id
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(*(t.poll(until) for t in tenants),
                         *(t.client(text, seed=100 * i + c, until=until) for i, t in enumerate(tenants)
                           for c in range(clients)))
    return time.monotonic() - started


async def run_tenant_soak(seconds: float, concurrency: int, workdir: Path, tenants: int = 3) -> dict[str, Any]:
    """Start both services with keys, soak as `tenants` tenants, stop them; the report as a dict."""
    names = [f"tenant{i + 1}" for i in range(max(2, tenants))]
    keys = write_config(workdir, names)
    ports = {"trainer": free_port(), "inference": free_port(), "http": free_port()}
    trainer_args, inference_args = service_args(workdir, ports, secrets.token_urlsafe(24))
    procs = {"trainer": start("trainer_service.server", trainer_args, workdir / "trainer.log"),
             "inference": start("inference_service.server", inference_args, workdir / "inference.log")}
    channels: list[grpc.aio.Channel] = []
    team: list[Tenant] = []
    try:
        for name in names:
            interceptors = bearer_key(keys[name])
            channels += [grpc.aio.insecure_channel(f"127.0.0.1:{ports[s]}", interceptors=interceptors)
                         for s in ("trainer", "inference")]
            http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['http']}", timeout=60,
                                     headers={"Authorization": f"Bearer {keys[name]}"})
            team.append(Tenant(name, keys[name], trainer_pb2_grpc.TrainerServiceStub(channels[-2]),
                               inference_pb2_grpc.InferenceServiceStub(channels[-1]), http))
        await asyncio.gather(wait_serving(channels[0]), wait_serving(channels[1]))
        wall = await drive(team, corpus_text(), seconds, max(2, concurrency // len(names)))
    finally:
        for channel in channels:
            await channel.close()
        for tenant in team:
            await tenant.http.aclose()
        exit_codes = stop(procs)
    return report(team, names[-1], wall, exit_codes, workdir)


def report(team: list[Tenant], over_limit: str, wall: float, exit_codes: dict[str, int],
           workdir: Path) -> dict[str, Any]:
    tallies = {t.name: t.tally for t in team}
    problems = verdict(tallies, over_limit) + [f"{n} exited {c}" for n, c in exit_codes.items() if c != 0]
    audit = [json.loads(line) for path in sorted((workdir / "audit").glob("*.jsonl"))
             for line in path.read_text(encoding="utf-8").splitlines()]
    return {"seconds": round(wall, 1), "over_limit": over_limit, "limits": OVER_LIMITS, "problems": problems,
            "tenants": {t.name: {**t.tally.summary(),
                                 "p50_ms": {k: soak.percentile(v, 0.5) for k, v in t.recorder.latencies.items()}}
                        for t in team},
            "audit_entries_by_tenant": {t.name: sum(e.get("tenant") == t.name for e in audit) for t in team},
            "exit_codes": exit_codes, "machine": {"platform": platform.platform()},
            "time": datetime.now(UTC).isoformat(timespec="seconds")}


def main(seconds: float, concurrency: int, tenants: int) -> int:
    with tempfile.TemporaryDirectory(prefix="chargpt-soak-tenants-") as tmp:
        result = asyncio.run(run_tenant_soak(seconds, concurrency, Path(tmp), tenants))
    print(f"{'tenant':10} {'requests':>8} {'ok':>6} {'refused':>7} {'malformed':>9} {'errors':>6}")
    for name, row in result["tenants"].items():
        print(f"{name:10} {row['requests']:8d} {row['ok']:6d} {row['refused']:7d} {len(row['malformed']):9d} "
              f"{sum(row['errors'].values()):6d}{'  (over its limits)' if name == result['over_limit'] else ''}")
    print("PASS" if not result["problems"] else "FAIL:\n  " + "\n  ".join(result["problems"]))
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "soak_tenants.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {results / 'soak_tenants.json'}")
    return 1 if result["problems"] else 0
