"""The inference half of issue 26's table test: every RPC (real client library) and every HTTP route (the openai
client where the route is OpenAI's) as another tenant answers as if the model did not exist."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from chargpt_client import AsyncInferenceClient, ClientOptions, NotFound, PermissionDenied, RetryPolicy

from chargpt.server.tenancy.interceptor import TenantInterceptor
from chargpt.server.tenancy.keys import KeyStore, create_key
from chargpt.server.tenancy.principal import current_principal
from chargpt.server.tenancy.scopes import undeclared
from chargpt.v1 import inference_pb2, trainer_pb2
from inference_service.grpc_api.servicer import RPC_SCOPES
from inference_service.openai_api.app import ROUTE_SCOPES
from tests.inference_service import conftest as inference_fixtures
from tests.inference_service.conftest import Served, ServerFactory, write_checkpoint
from tests.support.fake_trainer import CheckpointTrainer, serve_trainer

make_server = inference_fixtures.make_server  # the inference tests' real-server fixture, used here too

SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
JOB_OWNERS = {"job1": "acme", "job2": "globex"}  # the trainer's side of isolation: whose job is whose


class TenantTrainer(CheckpointTrainer):
    """A trainer that serves each job's checkpoint to its owner only (NOT_FOUND to anyone else), behind the real
    tenancy interceptor: loads from it succeed only when the inference service forwards the caller's own key."""

    async def DownloadCheckpoint(self, request: trainer_pb2.DownloadCheckpointRequest,
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if JOB_OWNERS.get(request.job_id) != current_principal().tenant:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
        async for message in super().DownloadCheckpoint(trainer_pb2.DownloadCheckpointRequest(
                job_id="job1", kind=request.kind, chunk_size=request.chunk_size), context):
            yield message


@dataclass
class Deployment:
    served: Served
    keys: dict[str, str]  # who -> bearer key
    audit: Path

    def client(self, who: str) -> AsyncInferenceClient:
        options = ClientOptions(token=self.keys[who], timeout=30, retry=RetryPolicy(max_attempts=1))
        return AsyncInferenceClient(f"127.0.0.1:{self.served.port}", options)

    def openai(self, who: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.http}/v1", api_key=self.keys[who], max_retries=0)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.served.server.http.port}"


@pytest.fixture
async def deployment(make_server: ServerFactory, tmp_path: Path) -> AsyncIterator[Deployment]:
    """acme and globex members, a globex reader and an admin; a shared preloaded model; acme's "secret" and
    "tiny", globex's own "tiny" (same name, another tenant), each loaded from its own trainer job."""
    keys_file = tmp_path / "keys.json"
    roles = {"acme": ("acme", "member"), "globex": ("globex", "member"), "reader": ("globex", "reader"),
             "admin": ("ops", "admin")}
    keys = {who: create_key(keys_file, tenant, role)[0] for who, (tenant, role) in roles.items()}
    trainer, port = await serve_trainer(TenantTrainer(write_checkpoint(tmp_path / "trainer" / "best", seed=4)),
                                        [TenantInterceptor(KeyStore(keys_file))])
    write_checkpoint(tmp_path / "models" / "shared", seed=1)
    served = await make_server(http_port=0, keys_file=keys_file, trainer_address=f"127.0.0.1:{port}",
                               preload="shared=shared", audit_log=tmp_path / "audit.jsonl")
    d = Deployment(served, keys, tmp_path / "audit.jsonl")
    for who, name, job in [("acme", "secret", "job1"), ("acme", "tiny", "job1"), ("globex", "tiny", "job2")]:
        async with d.client(who) as client:
            assert (await client.load_model(name, job_id=job, kind="best")).loaded
    yield d
    await trainer.stop(0)


Call = Callable[[AsyncInferenceClient], Awaitable[Any]]


async def _stream(client: AsyncInferenceClient, model: str) -> str:
    async with client.generate_stream(model, "a", max_new_tokens=3) as stream:
        return "".join([text async for text in stream])


# Every RPC on acme's "secret", as globex: exactly the answer for a model that is not loaded.
RPC_CASES: dict[str, Call] = {
    "GetModel": lambda c: c.get_model("secret"),
    "Generate": lambda c: c.generate("secret", "a", max_new_tokens=3),
    "GenerateStream": lambda c: _stream(c, "secret"),
    "Score": lambda c: c.score("secret", "abc"),
    "GetAttention": lambda c: c.attention("secret", "abc"),
    "UnloadModel": lambda c: c.unload_model("secret"),
    "LoadModel": lambda c: c.load_model("stolen", job_id="job1", kind="best"),  # the trainer says NOT_FOUND
}
LISTING_RPCS = {"ListModels"}  # answer with the caller's own and the shared models only


async def test_every_rpc_and_route_has_a_scope_and_a_case(make_server: ServerFactory) -> None:
    """Adding an RPC or a route without deciding its scope, and its case here, fails."""
    assert undeclared(SERVICE, RPC_SCOPES) == []
    assert set(RPC_CASES) | LISTING_RPCS == {m.name for m in SERVICE.methods}
    served: Served = await make_server(http_port=0)
    # Every route of the app (FastAPI includes routers lazily: its OpenAPI paths are the routes it serves).
    assert set(served.server.http.app.openapi()["paths"]) == set(ROUTE_SCOPES)
    assert set(ROUTE_CASES) | OPEN_ROUTES == set(ROUTE_SCOPES)


@pytest.mark.parametrize("rpc", sorted(RPC_CASES))
async def test_another_tenants_model_reads_as_missing(deployment: Deployment, rpc: str) -> None:
    async with deployment.client("globex") as other:
        with pytest.raises(NotFound) as refused:
            await RPC_CASES[rpc](other)
    async with deployment.client("acme") as owner:
        with pytest.raises(NotFound) as absent:
            await owner.get_model("no-such-model")
    if rpc != "LoadModel":  # same words as for a model that does not exist, with the name swapped
        assert refused.value.message == absent.value.message.replace("no-such-model", "secret")
    async with deployment.client("acme") as owner:
        assert (await owner.get_model("secret")).state == "READY"  # untouched


async def test_listing_names_and_roles(deployment: Deployment) -> None:
    async with deployment.client("acme") as acme, deployment.client("globex") as globex:
        assert sorted(m.name for m in await acme.list_models()) == ["secret", "shared", "tiny"]
        assert sorted(m.name for m in await globex.list_models()) == ["shared", "tiny"]
        ours, theirs = await acme.get_model("tiny"), await globex.get_model("tiny")
        assert ours.name == theirs.name == "tiny" and ours.source == "trainer:job1/best"
        assert theirs.source == "trainer:job2/best"
        assert len((await globex.generate("shared", "a", max_new_tokens=3)).text) == 3  # shared: usable by all
        with pytest.raises(PermissionDenied):
            await globex.load_model("mine", checkpoint_path="shared")  # the models root is the operator's
        with pytest.raises(PermissionDenied):
            await globex.unload_model("shared")
    async with deployment.client("reader") as reader:
        assert len((await reader.generate("tiny", "a", max_new_tokens=3)).text) == 3  # globex's own
        with pytest.raises(PermissionDenied):
            await reader.load_model("more", job_id="job2", kind="best")
        with pytest.raises(PermissionDenied):
            await reader.unload_model("tiny")
    async with deployment.client("admin") as admin:
        names = sorted(m.name for m in await admin.list_models())
        assert names == ["acme/secret", "acme/tiny", "globex/tiny", "shared"]
        assert len((await admin.generate("acme/secret", "a", max_new_tokens=3)).text) == 3
        await admin.unload_model("globex/tiny")
    async with deployment.client("acme") as acme:
        assert (await acme.get_model("tiny")).source == "trainer:job1/best"  # acme's is a different model
    audit = [json.loads(line) for line in deployment.audit.read_text().splitlines()]
    assert [(e["tenant"], e["action"], e["id"], e["outcome"]) for e in audit if e["action"] != "load"
            or e["tenant"] == "acme"] == [("acme", "load", "secret", "ok"), ("acme", "load", "tiny", "ok"),
                                          ("ops", "unload", "globex/tiny", "ok")]


async def test_refused_loads_are_audited_with_their_status(deployment: Deployment) -> None:
    """A refused LoadModel's outcome is the status the caller got (issue 26: it was a Python class name), and the
    refusals before any loading (a reader; a checkpoint_path without an admin key) are in the trail too."""
    async with deployment.client("globex") as globex, deployment.client("reader") as reader:
        with pytest.raises(NotFound):
            await globex.load_model("stolen", job_id="job1", kind="best")
        with pytest.raises(PermissionDenied):
            await globex.load_model("mine", checkpoint_path="shared")
        with pytest.raises(PermissionDenied):
            await reader.load_model("more", job_id="job2", kind="best")
    audit = [json.loads(line) for line in deployment.audit.read_text().splitlines()]
    assert [(e["tenant"], e["role"], e["action"], e["id"], e["outcome"]) for e in audit if e["outcome"] != "ok"] == [
        ("globex", "member", "load", "stolen", "NOT_FOUND"), ("globex", "member", "load", "mine", "PERMISSION_DENIED"),
        ("globex", "reader", "load", "more", "PERMISSION_DENIED")]


Route = Callable[[Deployment], Awaitable[None]]


async def _openai_missing(call: Callable[[openai.AsyncOpenAI], Awaitable[Any]], d: Deployment) -> None:
    async with d.openai("globex") as client:
        with pytest.raises(openai.NotFoundError) as refused:
            await call(client)
    assert refused.value.status_code == 404 and "secret" in refused.value.message


async def _list(d: Deployment) -> None:
    async with d.openai("globex") as globex, d.openai("acme") as acme:
        assert sorted(m.id for m in (await globex.models.list()).data) == ["shared", "tiny"]
        assert sorted(m.id for m in (await acme.models.list()).data) == ["secret", "shared", "tiny"]


async def _score(d: Deployment) -> None:
    async with httpx.AsyncClient(base_url=d.http, timeout=30) as http:
        reply = await http.post("/v1/score", json={"model": "secret", "text": "abc"},
                                headers={"Authorization": f"Bearer {d.keys['globex']}"})
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"


# Every route of the app as globex, on acme's "secret" where the route names a model.
ROUTE_CASES: dict[str, Route] = {
    "/v1/models": _list,
    "/v1/models/{name}": lambda d: _openai_missing(lambda c: c.models.retrieve("secret"), d),
    "/v1/completions": lambda d: _openai_missing(
        lambda c: c.completions.create(model="secret", prompt="a", max_tokens=3), d),
    "/v1/score": _score,
}
OPEN_ROUTES = {"/health", "/v1/chat/completions"}  # about the deployment, not anyone's models


@pytest.mark.parametrize("route", sorted(ROUTE_CASES))
async def test_every_route_isolates_tenants(deployment: Deployment, route: str) -> None:
    await ROUTE_CASES[route](deployment)


async def test_streamed_completion_of_another_tenants_model(deployment: Deployment) -> None:
    with pytest.raises(openai.NotFoundError):
        async with deployment.openai("globex") as client:
            await client.completions.create(model="secret", prompt="a", max_tokens=3, stream=True)
