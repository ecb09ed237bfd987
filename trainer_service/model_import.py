"""ImportModel: a nanoGPT or Hugging Face model, uploaded, converted into a checkpoint held by a finished job.

An imported model is addressed like a trained one: it gets a job id and a job record in state SUCCEEDED (no corpus,
never run) whose `best` and `latest` checkpoints are the converted weights, so LoadModel, Score, DownloadCheckpoint,
`chargpt export JOB` and init_from (`chargpt train --from JOB`) take it as they take any job. Its lineage (the job's
`parent`, the manifest's training.parent) records the origin: the format and the original files' sha256.
Nothing is kept from a failed import: files arrive in a temporary directory under the jobs directory, the job
directory is renamed into place only once its checkpoint is whole, and the store row is written last.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import torch

from chargpt.core.checkpoint import Lineage, TrainingInfo, save_checkpoint
from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT
from chargpt.core.tokenizer import CharTokenizer
from chargpt.errors import DataLossError, InvalidArgumentError, validated
from chargpt.formats import IMPORT_FILES, NANOGPT_CKPT, NANOGPT_META
from chargpt.formats.hf_transformers import read_hf
from chargpt.formats.imported import ImportedModel
from chargpt.formats.nanogpt import from_nanogpt, read_meta
from chargpt.receiver import CheckpointReceiver
from chargpt.server.tenancy.principal import DEFAULT_TENANT
from chargpt.v1 import trainer_pb2
from trainer_service.jobs.checkpoints import CheckpointInfo, checkpoint_dir, list_checkpoints
from trainer_service.store import Store
from trainer_service.training.api import BEST, LATEST, STEP_LIMIT, InitSource, TrainingPlan

# The files whose sha256 the lineage records, per format: (weights, vocabulary).
ORIGIN_FILES = {"nanogpt": (NANOGPT_CKPT, NANOGPT_META), "hf": ("model.safetensors", "tokenizer.json")}
MAX_NAME = 256
STAGING_PREFIX = ".import-"


class ModelImporter:
    """Receives, converts and files imported models under the trainer's jobs directory."""

    def __init__(self, store: Store, jobs_dir: Path, max_bytes: int) -> None:
        self.store, self.jobs_dir, self.max_bytes = store, jobs_dir, max_bytes

    async def import_model(self, name: str, format_name: str, files: Sequence[trainer_pb2.CheckpointFile],
                           chunks: AsyncIterator[trainer_pb2.CheckpointChunk],
                           owner: str = DEFAULT_TENANT) -> tuple[str, CheckpointInfo]:
        """Receive `files` (verified against their sizes and sha256) and convert them; returns the new job id and
        its best checkpoint."""
        if not 1 <= len(name) <= MAX_NAME:
            raise InvalidArgumentError("header.name", f"must be 1-{MAX_NAME} characters (got {len(name)})")
        _check_file_names(format_name, [f.name for f in files])
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.jobs_dir))
        try:
            received = await self._receive(files, chunks, staging)
            model = await asyncio.to_thread(read_model, format_name, received)
            sha = {f.name: f.sha256 for f in files}
            weights, vocabulary = ORIGIN_FILES[format_name]
            origin = Lineage(weights_sha256=sha[weights], step=model.step, source_format=format_name,
                             source_vocabulary_sha256=sha.get(vocabulary, ""))
            job_id = uuid.uuid4().hex
            job_dir = await asyncio.to_thread(self._file_job, job_id, model, origin, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        try:
            plan = imported_plan(job_id, model, origin, checkpoint_dir(job_dir, BEST))
            self.store.insert_imported_job(job_id, name, plan.model_dump_json(), plan.model.parameter_count(),
                                           model.step, model.val_loss, f"imported from {format_name} "
                                           f"({weights} sha256 {sha[weights][:16]}…)", owner)
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        return job_id, next(c for c in list_checkpoints(job_dir) if c.kind == BEST)

    async def _receive(self, files: Sequence[trainer_pb2.CheckpointFile],
                       chunks: AsyncIterator[trainer_pb2.CheckpointChunk], staging: Path) -> Path:
        """The files, each chunk and file checked against its sha256 as a download's are; a broken upload is
        INVALID_ARGUMENT naming `files` (over max_bytes: RESOURCE_EXHAUSTED)."""
        receiver = CheckpointReceiver(staging, max_total_bytes=self.max_bytes)
        try:
            receiver.feed(trainer_pb2.DownloadCheckpointResponse(
                header=trainer_pb2.CheckpointArchiveHeader(files=files)))
            async for chunk in chunks:
                await asyncio.to_thread(receiver.feed, trainer_pb2.DownloadCheckpointResponse(chunk=chunk))
            return await asyncio.to_thread(receiver.finish, "files")
        except DataLossError as exc:
            raise InvalidArgumentError("files", str(exc)) from None
        finally:
            receiver.abort()

    def _file_job(self, job_id: str, model: ImportedModel, origin: Lineage, staging: Path) -> Path:
        """Write the job directory (best and latest: the same weights) in `staging`, then rename it into place."""
        job_dir = staging / "job"
        training = TrainingInfo(job_id=job_id, step=model.step, val_loss=model.val_loss, parent=origin)
        save_checkpoint(checkpoint_dir(job_dir, BEST), chargpt_model(model), CharTokenizer(model.vocabulary),
                        training)
        shutil.copytree(checkpoint_dir(job_dir, BEST), checkpoint_dir(job_dir, LATEST), copy_function=_link)
        final = self.jobs_dir / job_id
        os.rename(job_dir, final)
        return final


def _check_file_names(format_name: str, names: list[str]) -> None:
    needed, optional = IMPORT_FILES[format_name]
    missing, unknown = sorted(set(needed) - set(names)), sorted(set(names) - set(needed) - set(optional))
    if missing or unknown:
        listed = ", ".join(sorted(needed)) + (f" (and optionally {', '.join(sorted(optional))})" if optional else "")
        raise InvalidArgumentError("header.files", f"a {format_name} import is the files {listed}; missing "
                                   f"{missing}, unexpected {unknown}")


def read_model(format_name: str, directory: Path) -> ImportedModel:
    """The received files as chargpt's model (torch.load never runs pickled code: weights_only)."""
    if format_name == "hf":
        return read_hf(directory)
    meta = directory / NANOGPT_META
    vocabulary = read_meta(meta.read_bytes()) if meta.exists() else None
    return from_nanogpt(load_nanogpt(directory / NANOGPT_CKPT), vocabulary)


def _load_failure(exc: Exception) -> str:
    """Why torch.load refused the file, without torch's advice to load it with weights_only=False (which would run
    whatever the pickle names: exactly what this refusal is for)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):  # torch's restricted unpickler said no
        named = next((line for line in lines if "GLOBAL" in line), "")  # e.g. "... unsupported GLOBAL posix.system"
        return ("it holds objects other than tensors and plain values, refused without running them (a nanoGPT "
                f"ckpt.pt holds only those){': ' + named[:200] if named else ''}")
    return f"not a readable PyTorch checkpoint ({type(exc).__name__}: {lines[0][:300] if lines else 'no detail'})"


def load_nanogpt(path: Path) -> dict[str, Any]:
    """ckpt.pt with its tensors as float32 numpy arrays; a pickle that names anything but tensors and plain values
    is refused by torch's weights-only unpickler before any of it runs."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, hostile pickle, not a torch file: torch raises a variety
        raise InvalidArgumentError(NANOGPT_CKPT, _load_failure(exc)) from None
    if not isinstance(checkpoint, dict):
        raise InvalidArgumentError(NANOGPT_CKPT, f"holds a {type(checkpoint).__name__}, not nanoGPT's checkpoint dict")
    state = checkpoint.get("model")
    if isinstance(state, dict):
        checkpoint["model"] = {k: v.detach().to(torch.float32).numpy() if isinstance(v, torch.Tensor) else v
                               for k, v in state.items()}
    best = checkpoint.get("best_val_loss")
    if isinstance(best, torch.Tensor) and best.numel() == 1:
        checkpoint["best_val_loss"] = float(best)
    return checkpoint


def chargpt_model(model: ImportedModel) -> GPT:
    a = model.arch
    config = validated(ModelConfig, dict(vocab_size=a.vocab_size, block_size=a.block_size, n_layer=a.n_layer,
                                         n_embd=a.n_embd, n_head=a.n_head, dropout=a.dropout, bias=a.bias),
                       lambda name: f"model.{name}")
    gpt = GPT(config)
    result = gpt.load_state_dict({k: torch.from_numpy(v) for k, v in model.tensors.items()}, strict=False)
    if result.missing_keys != ["lm_head.weight"] or result.unexpected_keys:  # the tied head comes with wte
        raise InvalidArgumentError("model", f"weights do not fit chargpt's model: missing {result.missing_keys[:5]}, "
                                   f"unexpected {result.unexpected_keys[:5]}")
    return gpt


def imported_plan(job_id: str, model: ImportedModel, origin: Lineage, directory: Path) -> TrainingPlan:
    """The job record's plan: the architecture, and `init_from` carrying the origin (the job's `parent` on the
    wire). An imported job never trains, so its training fields are the placeholders of a one-step CPU run."""
    config = ModelConfig(**{name: getattr(model.arch, name) for name in ModelConfig.model_fields})
    steps = min(max(1, model.step), STEP_LIMIT)
    source = InitSource(path=directory, vocabulary=model.vocabulary, lineage=origin)
    return TrainingPlan.model_validate(dict(job_id=job_id, model=config, device="cpu", max_steps=steps, batch_size=1,
                                            learning_rate=1e-3, warmup_steps=0, compile="off", precision="fp32",
                                            init_from=source))


def _link(source: str, destination: str) -> None:
    """Hard-link a file (latest shares best's bytes), copying where the file system cannot link."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
