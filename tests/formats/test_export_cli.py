"""`chargpt export` end to end: a real trainer job's checkpoint, downloaded and converted; bad input exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from chargpt_client import ExportResult, ModelConfig, TrainerClient, TrainingOptions, export_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from chargpt.core.checkpoint import load_checkpoint
from chargpt.formats.onnx_decode import OnnxDecoder
from tests.client.conftest import FAST_RETRY, ServerThread, trainer_factory

ROOT = Path(__file__).resolve().parents[2]
CORPUS = "First Citizen:\tBefore we proceed any further, hear me speak — señor.\n\nAll:\nSpeak, speak.\n\n" * 60
BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked in this test)", name=name)
sys.meta_path.insert(0, _Block())
from chargpt_client.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


@dataclass
class Trained:
    trainer: TrainerClient
    address: str
    job_id: str
    workdir: Path

    def cli(self, *args: str, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{ROOT}:{ROOT / 'client'}",
               "CHARGPT_TRAINER_ADDRESS": self.address}
        command = ["-c", BLOCK.format(blocked=set(blocked))] if blocked else ["-m", "chargpt_client.cli"]
        return subprocess.run([sys.executable, *command, *args], capture_output=True, text=True, cwd=self.workdir,
                              env=env, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    servers = ServerThread()
    root = tmp_path_factory.mktemp("export-cli")
    _, address = servers.start(trainer_factory(root / "trainer", builtin_corpora=False, event_poll_seconds=0.05))
    with TrainerClient(address, FAST_RETRY) as client:
        corpus = client.upload_corpus("citizens", CORPUS).corpus
        job = client.create_job(corpus.corpus_id, model=ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32),
                                training=TrainingOptions(max_steps=6, batch_size=4, eval_interval=3,
                                                         sample_interval=0, checkpoint_interval=3, seed=1))
        list(client.watch_job(job.job_id))
        assert client.get_job(job.job_id).state == "SUCCEEDED"
        yield Trained(client, address, job.job_id, root)
    servers.close()


def test_export_job_to_hf_then_transformers_matches_the_jobs_checkpoint(trained: Trained) -> None:
    result = trained.cli("export", trained.job_id, "--format", "hf", "--out", "hf")
    assert result.returncode == 0, result.stderr
    assert f"exported {trained.job_id}:best (step 6) to hf (hf): README.md, config.json" in result.stdout
    reference = load_checkpoint(trained.trainer.download_checkpoint(trained.job_id, trained.workdir / "ref").path)
    model = AutoModelForCausalLM.from_pretrained(trained.workdir / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(trained.workdir / "hf")
    ids = tokenizer("Speak, señor —\t", return_tensors="pt").input_ids
    assert ids[0].tolist() == reference.tokenizer.encode("Speak, señor —\t")
    with torch.no_grad():
        assert (model(ids).logits[0, :, :-1] - reference.model(ids)[0][0]).abs().max() < 1e-4
    assert "citizens" in (trained.workdir / "hf" / "README.md").read_text()


def test_export_latest_to_onnx_as_json_and_a_local_directory_to_gguf(trained: Trained) -> None:
    result = trained.cli("export", f"{trained.job_id}:latest", "--format", "onnx", "--out", "onnx", "--json")
    assert result.returncode == 0, result.stderr
    exported = json.loads(result.stdout)
    assert exported["source"] == f"{trained.job_id}:latest" and exported["step"] == 6
    assert exported["files"] == ["README.md", "chargpt.json", "model.onnx"]
    assert len(OnnxDecoder(trained.workdir / "onnx").greedy("Speak", 10)) == 10
    local = trained.trainer.download_checkpoint(trained.job_id, trained.workdir / "local", kind="latest").path
    result = trained.cli("export", local, "--format", "gguf", "--gguf-type", "f32", "--out", "gguf")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (trained.workdir / "gguf").iterdir()) == ["README.md", "model-f32.gguf"]


def test_the_library_function_exports_a_job(trained: Trained, tmp_path: Path) -> None:
    result = export_model(trained.job_id, "onnx", tmp_path / "onnx", trainer=trained.trainer)
    assert isinstance(result, ExportResult) and result.step == 6 and "model.safetensors" in result.weights_sha256
    decoder = OnnxDecoder(result.path)
    logits, _ = decoder.forward(np.array([decoder.encode("Speak")]), decoder.empty_cache())
    assert logits.shape == (1, 5, len(decoder.vocabulary))


def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(trained: Trained) -> None:
    (trained.workdir / "taken").mkdir()
    (trained.workdir / "taken" / "notes.txt").write_text("mine")
    cases = [
        (["export", f"{trained.job_id}:newest", "--format", "hf", "--out", "x"], "neither a checkpoint directory"),
        (["export", "./missing", "--format", "hf", "--out", "x"], "no such checkpoint directory: missing"),
        (["export", trained.job_id, "--format", "hf", "--out", "taken"], "taken already exists"),
        (["export", trained.job_id, "--format", "hf", "--gguf-type", "f16", "--out", "x"], "--format gguf only"),
        (["export", "trainer", "--format", "hf", "--out", "x"], "not a chargpt checkpoint directory"),
        (["export", trained.job_id, "--format", "gguf", "--gguf-type", "q8_0", "--out", "x"], "n_embd 16"),
        (["export", trained.job_id, "--format", "tflite", "--out", "x"], "invalid choice: 'tflite'"),
    ]
    for args, message in cases:
        result = trained.cli(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    assert not (trained.workdir / "x").exists() and not list(trained.workdir.glob(".x.*"))
    assert [p.name for p in (trained.workdir / "taken").iterdir()] == ["notes.txt"]


def test_an_unknown_job_is_the_servers_not_found(trained: Trained) -> None:
    result = trained.cli("export", "nosuchjob", "--format", "hf", "--out", "x")
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr


def test_without_the_export_extra_exit_3_says_what_to_install(trained: Trained) -> None:
    local = trained.workdir / "local"
    if not local.exists():
        trained.trainer.download_checkpoint(trained.job_id, local)
    result = trained.cli("export", str(local), "--format", "gguf", "--out", "g", blocked=("gguf",))
    assert result.returncode == 3 and "gguf is not installed (pip install 'chargpt[export]')" in result.stderr
    result = trained.cli("export", str(local), "--format", "hf", "--out", "h", blocked=("torch", "numpy"))
    assert result.returncode == 3 and "numpy is not installed" in result.stderr
