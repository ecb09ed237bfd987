"""ImportModel end to end: a real trainer and inference server, the real client and CLI. An imported model serves,
trains on with `train --from`, and exports back bit for bit; bad files are INVALID_ARGUMENT and leave nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from chargpt_client import (
    AsyncTrainerClient,
    ImportResult,
    InferenceClient,
    InvalidArgument,
    ModelConfig,
    TrainerClient,
    TrainingOptions,
    export_model,
)
from chargpt_client.cli import model_cmds
from safetensors.torch import load_file

from chargpt.core.checkpoint import load_checkpoint
from tests.client.conftest import FAST_RETRY, ServerThread, inference_factory, trainer_factory
from tests.formats.conftest import TinyModel, write_tiny
from tests.formats.nanogpt_layout import RunsCommand, write_nanogpt

ROOT = Path(__file__).resolve().parents[2]
CORPUS = "abcdefghij klmnopqrstuvwxyz.\n" * 200


@dataclass
class Servers:
    trainer: TrainerClient
    inference: InferenceClient
    address: str
    data_dir: Path
    tiny: TinyModel
    workdir: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{ROOT}:{ROOT / 'client'}",
               "CHARGPT_TRAINER_ADDRESS": self.address}
        return subprocess.run([sys.executable, "-m", "chargpt_client.cli", *args], capture_output=True, text=True,
                              cwd=self.workdir, env=env, timeout=300)

    def files(self) -> set[Path]:
        return {p.relative_to(self.data_dir) for p in self.data_dir.rglob("*") if "calibration" not in p.parts}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    threads = ServerThread()
    root = tmp_path_factory.mktemp("import")
    tiny = write_tiny(root / "tiny", seed=5, vocab=sorted(set(CORPUS)), n_embd=32)
    _, address = threads.start(trainer_factory(root / "trainer", builtin_corpora=False, event_poll_seconds=0.05))
    _, inference_address = threads.start(inference_factory(root / "models", trainer_address=address))
    with TrainerClient(address, FAST_RETRY) as trainer, InferenceClient(inference_address, FAST_RETRY) as inference:
        yield Servers(trainer, inference, address, root / "trainer", tiny, root)
    threads.close()


def test_cli_imports_nanogpt_then_it_serves_greedy_text_as_chargpt_does(servers: Servers,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, meta = write_nanogpt(servers.tiny, servers.workdir / "out-shakespeare-char", compiled=True)
    result = servers.cli("import", "nanogpt", str(ckpt), "--meta", str(meta), "--name", "shakespeare-char")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert "origin: a nanogpt model imported at step 5000" in result.stderr
    job = servers.trainer.get_job(job_id)
    assert (job.state, job.display_name, job.step, job.corpus_id) == ("SUCCEEDED", "shakespeare-char", 5000, "")
    assert job.parent is not None and job.parent.source_format == "nanogpt"
    assert job.parent.weights_sha256 == _sha256(ckpt) and job.parent.source_vocabulary_sha256 == _sha256(meta)
    assert {c.kind for c in servers.trainer.list_checkpoints(job_id)} == {"best", "latest"}
    servers.inference.load_model("imported", job_id=job_id)
    model_cmds.show(servers.inference.get_model("imported"))  # `chargpt models show`: its origin, not "corpus ,"
    assert "  imported: a nanogpt model imported at step 5000" in capsys.readouterr().out
    prompt = "hello world.\n"
    text = servers.inference.generate("imported", prompt, max_new_tokens=60, temperature=0.0).text
    assert text == servers.tiny.greedy(prompt, 60)
    score = servers.inference.score("imported", prompt)
    reference = torch.log_softmax(servers.tiny.logits(prompt), -1)
    ids = servers.tiny.tokenizer.encode(prompt)
    expected = sum(float(reference[i, ids[i + 1]]) for i in range(len(ids) - 1))
    assert score.num_tokens == len(ids) - 1 and score.mean_nll == pytest.approx(-expected / (len(ids) - 1), abs=1e-4)


def test_an_imported_model_fine_tunes_with_train_from(servers: Servers) -> None:
    ckpt, meta = write_nanogpt(servers.tiny, servers.workdir / "for-finetune")
    imported = servers.trainer.import_model("nanogpt", ckpt, meta=meta, name="parent")
    corpus = servers.trainer.upload_corpus("letters", CORPUS).corpus
    job = servers.trainer.create_job(corpus.corpus_id, init_from=f"{imported.job.job_id}:best",
                                     training=TrainingOptions(max_steps=3, batch_size=2, eval_interval=3,
                                                              sample_interval=0, checkpoint_interval=3, seed=1))
    list(servers.trainer.watch_job(job.job_id))
    finished = servers.trainer.get_job(job.job_id)
    assert finished.state == "SUCCEEDED", finished.error
    assert finished.parent is not None and finished.parent.job_id == imported.job.job_id
    assert finished.parent.weights_sha256 == imported.checkpoint.weights_sha256
    assert finished.model == ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=256, vocab_size=len(set(CORPUS)),
                                         dropout=0.1, bias=False)


def test_hf_import_of_an_export_gives_back_the_same_weights_and_vocabulary(servers: Servers) -> None:
    for bias in (False, True):
        tiny = write_tiny(servers.workdir / f"hf-source-{bias}", seed=6, bias=bias)
        export_model(tiny.path, "hf", servers.workdir / f"hf-{bias}")
        result = asyncio.run(_import_async(servers.address, servers.workdir / f"hf-{bias}"))
        assert isinstance(result, ImportResult) and result.job.parent is not None
        assert result.job.parent.source_format == "hf" and result.job.model.bias is bias
        back = servers.trainer.download_checkpoint(result.job.job_id, servers.workdir / f"back-{bias}").path
        assert load_checkpoint(back).tokenizer.vocabulary == tiny.tokenizer.vocabulary
        original, imported = load_file(str(tiny.path / "model.safetensors")), load_file(f"{back}/model.safetensors")
        assert original.keys() == imported.keys()
        assert all(torch.equal(original[k], imported[k]) for k in original)
        manifest = json.loads((Path(back) / "manifest.json").read_text())
        assert manifest["model"] == json.loads((tiny.path / "manifest.json").read_text())["model"]


async def _import_async(address: str, directory: Path) -> ImportResult:
    async with AsyncTrainerClient(address, FAST_RETRY) as trainer:
        return await trainer.import_model("hf", directory, name="round-trip")


def test_bad_files_are_invalid_argument_naming_the_field_and_leave_nothing(servers: Servers) -> None:
    bad = servers.workdir / "bad"
    ckpt, meta = write_nanogpt(servers.tiny, bad / "good")
    (bad / "truncated.pt").write_bytes(ckpt.read_bytes()[:5000])
    torch.save({"model": {}, "model_args": {}, "x": RunsCommand(f"touch {bad / 'ran'}")}, bad / "hostile.pt")
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["model"]["transformer.h.0.attn.c_proj.weight"] = torch.zeros(32, 16)
    torch.save(checkpoint, bad / "shapes.pt")
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["model_args"]["vocab_size"] = 27
    torch.save(checkpoint, bad / "vocab.pt")
    (bad / "hostile.pkl").write_bytes(__import__("pickle").dumps(RunsCommand(f"touch {bad / 'ran'}")))
    before = servers.files()
    cases = [(bad / "truncated.pt", meta, "ckpt.pt"), (bad / "hostile.pt", meta, "ckpt.pt"),
             (bad / "shapes.pt", meta, "ckpt.pt: blocks.0.attn.c_proj.weight"), (bad / "vocab.pt", meta, "vocab_size"),
             (ckpt, bad / "hostile.pkl", "meta.pkl")]
    for weights, vocabulary, field in cases:
        with pytest.raises(InvalidArgument) as error:
            servers.trainer.import_model("nanogpt", weights, meta=vocabulary, name="bad")
        assert error.value.violations[0].field == field, (weights, error.value)
    with pytest.raises(InvalidArgument, match="not a character model"):
        servers.trainer.import_model("nanogpt", _gpt2_sized(bad), name="gpt2")
    assert not (bad / "ran").exists()
    assert servers.files() == before  # no job directory, no received files, no temporaries


def _gpt2_sized(directory: Path) -> Path:
    args = dict(n_layer=1, n_head=1, n_embd=8, block_size=8, bias=False, vocab_size=50304, dropout=0.0)
    torch.save({"model": {"transformer.wte.weight": torch.zeros(50304, 8)}, "model_args": args}, directory / "g.pt")
    return directory / "g.pt"


def test_the_cli_refuses_a_missing_file_before_connecting(servers: Servers) -> None:
    result = servers.cli("import", "hf", "nowhere", "--name", "x")
    assert result.returncode == 2 and "no such file: nowhere/config.json" in result.stderr


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_cli_exits_1_when_the_trainer_refuses_the_files(servers: Servers) -> None:
    """A server error is exit 1 for every command (2 is a usage error), though InvalidArgument is a ValueError."""
    ckpt, meta = write_nanogpt(servers.tiny, servers.workdir / "refused")
    truncated = ckpt.with_name("truncated.pt")
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    result = servers.cli("import", "nanogpt", str(truncated), "--meta", str(meta), "--name", "x")
    assert result.returncode == 1, result.stderr
    assert "INVALID_ARGUMENT" in result.stderr and "ckpt.pt" in result.stderr
