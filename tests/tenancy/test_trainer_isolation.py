"""Every TrainerService RPC as another tenant, through the real client on a real trainer: the isolated answer.

The table below has one entry per RPC (RPC_SCOPES decides which); an RPC without a declared scope, or without an
entry here, fails the first two tests."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chargpt_client import (
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    TrainerClient,
    TrainingOptions,
)
from chargpt_client import types as t

from chargpt.server.tenancy.scopes import undeclared
from chargpt.v1 import trainer_pb2
from tests.formats.conftest import write_tiny
from tests.formats.nanogpt_layout import write_nanogpt
from tests.tenancy.trainer_tenants import TenantTrainer, tenant_trainer
from trainer_service.servicer import RPC_SCOPES

SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]
TEXT = "the quick brown fox jumps over the lazy dog. " * 60
MISSING_JOB, MISSING_CORPUS = "f" * 32, "0" * 64
TINY = t.ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)
STEPS = TrainingOptions(max_steps=2, batch_size=2, eval_interval=2, sample_interval=0, checkpoint_interval=2,
                        warmup_steps=0)


@dataclass
class World:
    """Tenant alpha's things (a corpus, a finished job, a cancelled one, an imported model) and every kind of key."""

    alpha: TrainerClient
    beta: TrainerClient
    reader: TrainerClient  # alpha's reader key
    admin: TrainerClient  # tenant ops, role admin
    corpus: t.Corpus
    finished: t.TrainingJob
    cancelled: t.TrainingJob
    imported: t.TrainingJob
    nanogpt: tuple[Path, Path]
    audit: Path
    root: Path
    trainer: TenantTrainer


def _wait(client: TrainerClient, job_id: str) -> t.TrainingJob:
    for _event in client.watch_job(job_id, timeout=120):
        pass
    return client.get_job(job_id)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("tenancy")
    keys = {"alpha": ("alpha", "member"), "beta": ("beta", "member"), "reader": ("alpha", "reader"),
            "admin": ("ops", "admin")}
    with tenant_trainer(root, keys, audit_log=root / "audit.jsonl") as trainer:
        yield _alphas_things(trainer, root)


def _alphas_things(clients: TenantTrainer, root: Path) -> World:
    alpha = clients["alpha"]
    corpus = alpha.upload_corpus("notes", TEXT).corpus
    finished = alpha.create_job(corpus.corpus_id, model=TINY, training=STEPS, device="cpu")
    queued = alpha.create_job(corpus.corpus_id, model=TINY, training=STEPS, device="cpu")
    cancelled = alpha.cancel_job(queued.job_id)
    nanogpt = write_nanogpt(write_tiny(root / "tiny", seed=3, vocab="".join(sorted(set(TEXT)))), root / "nanogpt")
    imported = alpha.import_model("nanogpt", nanogpt[0], meta=nanogpt[1], name="imported").job
    finished = _wait(alpha, finished.job_id)
    assert (finished.state, cancelled.state) == ("SUCCEEDED", "CANCELLED")
    return World(alpha, clients["beta"], clients["reader"], clients["admin"], corpus, finished, cancelled, imported,
                 nanogpt, root / "audit.jsonl", root, clients)


def like_missing(call: Callable[[str], object], own_id: str, missing_id: str) -> None:
    """`call` on another tenant's id fails exactly as on an id that does not exist (same status, same words)."""
    with pytest.raises(NotFound) as theirs:
        call(own_id)
    with pytest.raises(NotFound) as nobody:
        call(missing_id)
    assert theirs.value.message.replace(own_id, "ID") == nobody.value.message.replace(missing_id, "ID")


def _job_ids(jobs: list[t.TrainingJob]) -> set[str]:
    return {j.job_id for j in jobs}


def _beta_asks_for_the_device(w: World) -> None:
    assert w.beta.device_info().device.type == "cpu"  # about the deployment: open to every tenant
    with pytest.raises(PermissionDenied):  # ... but measuring the shared host again is an admin's call
        w.beta.device_info(recalibrate=True)


def _beta_uploads_the_same_text(w: World) -> None:
    mine = w.beta.upload_corpus("notes", TEXT)
    assert mine.created and mine.corpus.tenant == "beta" and mine.corpus.corpus_id != w.corpus.corpus_id
    assert mine.corpus.corpus_id not in {c.corpus_id for c in w.alpha.list_corpora()}
    like_missing(w.alpha.get_corpus, mine.corpus.corpus_id, MISSING_CORPUS)


def _beta_lists_corpora(w: World) -> None:
    seen = w.beta.list_corpora()
    assert w.corpus.corpus_id not in {c.corpus_id for c in seen}
    assert {c.tenant for c in seen} <= {"beta", ""}  # its own and the built-ins


def _beta_creates_jobs(w: World) -> None:
    like_missing(lambda c: w.beta.create_job(c, model=TINY, training=STEPS, device="cpu"), w.corpus.corpus_id,
                 MISSING_CORPUS)
    own = w.beta.upload_corpus("own", TEXT + "!").corpus
    like_missing(lambda j: w.beta.create_job(own.corpus_id, training=STEPS, device="cpu", init_from=j),
                 w.finished.job_id, MISSING_JOB)
    mine = w.beta.create_job(own.corpus_id, model=TINY, training=STEPS, device="cpu", priority=3)
    assert (mine.tenant, mine.priority) == ("beta", 3)
    like_missing(w.alpha.get_job, mine.job_id, MISSING_JOB)
    w.beta.cancel_job(mine.job_id)


def _beta_lists_jobs(w: World) -> None:
    assert not _job_ids(w.beta.list_jobs()) & {w.finished.job_id, w.cancelled.job_id, w.imported.job_id}


def _beta_watches(w: World) -> None:
    like_missing(lambda j: list(w.beta.watch_job(j, timeout=10)), w.finished.job_id, MISSING_JOB)


def _beta_downloads(w: World) -> None:
    like_missing(lambda j: w.beta.download_checkpoint(j, w.root / f"download-{j}"), w.finished.job_id,
                 MISSING_JOB)
    assert not (w.root / f"download-{w.finished.job_id}").exists()


def _beta_imports(w: World) -> None:
    mine = w.beta.import_model("nanogpt", w.nanogpt[0], meta=w.nanogpt[1], name="mine").job
    assert mine.tenant == "beta"
    like_missing(w.alpha.get_job, mine.job_id, MISSING_JOB)


# What tenant beta gets from each RPC when it reaches for tenant alpha's things.
AS_OTHER_TENANT: dict[str, Callable[[World], None]] = {
    "GetDeviceInfo": _beta_asks_for_the_device,
    "UploadCorpus": _beta_uploads_the_same_text,
    "ListCorpora": _beta_lists_corpora,
    "GetCorpus": lambda w: like_missing(w.beta.get_corpus, w.corpus.corpus_id, MISSING_CORPUS),
    "ReadCorpus": lambda w: like_missing(w.beta.read_corpus, w.corpus.corpus_id, MISSING_CORPUS),
    "DeleteCorpus": lambda w: like_missing(w.beta.delete_corpus, w.corpus.corpus_id, MISSING_CORPUS),
    "CreateTrainingJob": _beta_creates_jobs,
    "GetTrainingJob": lambda w: like_missing(w.beta.get_job, w.finished.job_id, MISSING_JOB),
    "ListTrainingJobs": _beta_lists_jobs,
    "CancelTrainingJob": lambda w: like_missing(w.beta.cancel_job, w.finished.job_id, MISSING_JOB),
    "ResumeTrainingJob": lambda w: like_missing(w.beta.resume_job, w.cancelled.job_id, MISSING_JOB),
    "WatchTrainingJob": _beta_watches,
    "ListCheckpoints": lambda w: like_missing(w.beta.list_checkpoints, w.finished.job_id, MISSING_JOB),
    "DownloadCheckpoint": _beta_downloads,
    "ImportModel": _beta_imports,
}


def test_every_rpc_declares_its_scope() -> None:
    assert undeclared(SERVICE, RPC_SCOPES) == []


def test_the_table_covers_every_rpc() -> None:
    assert sorted(AS_OTHER_TENANT) == sorted(m.name for m in SERVICE.methods)


@pytest.mark.parametrize("rpc", sorted(RPC_SCOPES))
def test_another_tenant_gets_the_isolated_answer(world: World, rpc: str) -> None:
    AS_OTHER_TENANT[rpc](world)
    # ... and tenant alpha's things are all still there, unchanged.
    assert world.alpha.get_corpus(world.corpus.corpus_id).tenant == "alpha"
    assert world.alpha.get_job(world.cancelled.job_id).state == "CANCELLED"


def test_an_admin_sees_every_tenant(world: World) -> None:
    assert world.corpus.corpus_id in {c.corpus_id for c in world.admin.list_corpora()}
    assert {world.finished.job_id, world.cancelled.job_id, world.imported.job_id} <= _job_ids(world.admin.list_jobs())
    assert world.admin.get_job(world.finished.job_id).tenant == "alpha"
    assert [c.kind for c in world.admin.list_checkpoints(world.finished.job_id)]
    assert world.admin.read_corpus(world.corpus.corpus_id, length=10).text == TEXT[:10]


def test_a_reader_reads_its_tenant_but_changes_nothing(world: World) -> None:
    assert world.reader.get_job(world.finished.job_id).job_id == world.finished.job_id
    assert world.corpus.corpus_id in {c.corpus_id for c in world.reader.list_corpora()}
    writes: list[Callable[[], object]] = [
        lambda: world.reader.upload_corpus("mine", TEXT),
        lambda: world.reader.delete_corpus(world.corpus.corpus_id),
        lambda: world.reader.create_job(world.corpus.corpus_id, model=TINY, training=STEPS, device="cpu"),
        lambda: world.reader.cancel_job(world.finished.job_id),
        lambda: world.reader.resume_job(world.cancelled.job_id),
        lambda: world.reader.import_model("nanogpt", world.nanogpt[0], meta=world.nanogpt[1], name="x"),
    ]
    for write in writes:
        with pytest.raises(PermissionDenied):
            write()
    assert world.alpha.get_job(world.cancelled.job_id).state == "CANCELLED"


def test_built_in_corpora_are_shared_and_read_only(world: World) -> None:
    builtins = [c for c in world.beta.list_corpora() if c.builtin]
    assert builtins and all(c.tenant == "" for c in builtins)
    name = builtins[0].name
    assert world.beta.read_corpus(name, length=5).text and world.alpha.get_corpus(name).builtin
    for client in (world.beta, world.admin):
        with pytest.raises(FailedPrecondition):
            client.delete_corpus(name)


def test_a_path_init_from_needs_an_admin_key(world: World) -> None:
    with pytest.raises(PermissionDenied, match=re.escape("init_from.path")):
        world.beta.create_job("startups", training=STEPS, device="cpu", init_from="jobs/x/checkpoints/best")


def test_jobs_are_counted_per_tenant(world: World) -> None:
    lines = world.trainer.metrics().splitlines()
    assert 'chargpt_trainer_jobs_created_total{tenant="alpha"} 2.0' in lines
    assert 'chargpt_trainer_tenant_jobs{state="succeeded",tenant="alpha"} 2.0' in lines  # its job and the import


def test_the_audit_log_names_who_did_what(world: World) -> None:
    world.alpha.read_corpus(world.corpus.corpus_id, length=5)
    world.alpha.download_checkpoint(world.finished.job_id, world.root / "audited-download")
    entries = [json.loads(line) for line in world.audit.read_text().splitlines()]
    done = {(e["tenant"], e["action"], e["resource"], e["id"]) for e in entries}
    assert {("alpha", "upload", "corpus", world.corpus.corpus_id), ("alpha", "create", "job", world.finished.job_id),
            ("alpha", "cancel", "job", world.cancelled.job_id), ("alpha", "import", "model", world.imported.job_id),
            ("alpha", "read", "corpus", world.corpus.corpus_id),
            ("alpha", "download", "checkpoint", world.finished.job_id)} <= done
    assert all(e["key_id"] and e["role"] for e in entries)


def test_the_audit_log_records_refused_actions_with_their_status(world: World) -> None:
    """Refusals are in the trail too (issue 26 listed them as missing), the outcome being the status the caller
    got: a reader's write, another tenant's job, and a stream refused before its first message."""
    with pytest.raises(PermissionDenied):
        world.reader.delete_corpus(world.corpus.corpus_id)
    with pytest.raises(NotFound):
        world.beta.cancel_job(world.finished.job_id)
    with pytest.raises(NotFound):
        world.beta.download_checkpoint(world.finished.job_id, world.root / "refused-download")
    with pytest.raises(PermissionDenied):
        world.reader.upload_corpus("mine", TEXT)
    entries = [json.loads(line) for line in world.audit.read_text().splitlines()]
    refused = {(e["tenant"], e["role"], e["action"], e["resource"], e["id"], e["outcome"]) for e in entries}
    assert {("alpha", "reader", "delete", "corpus", world.corpus.corpus_id, "PERMISSION_DENIED"),
            ("beta", "member", "cancel", "job", world.finished.job_id, "NOT_FOUND"),
            ("beta", "member", "download", "checkpoint", world.finished.job_id, "NOT_FOUND"),
            ("alpha", "reader", "upload", "corpus", "", "PERMISSION_DENIED")} <= refused
    assert world.alpha.get_corpus(world.corpus.corpus_id).corpus_id == world.corpus.corpus_id  # nothing changed
