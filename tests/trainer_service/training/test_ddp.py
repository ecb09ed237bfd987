"""Two gloo processes under torchrun: same step count, rank 0 alone reports and writes, ranks agree on weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chargpt.core.checkpoint import load_checkpoint
from chargpt.core.config import ModelConfig
from trainer_service.training.api import CorpusRef, TrainingPlan
from trainer_service.training.data import CorpusData
from trainer_service.training.loop import run_training

ROOT = Path(__file__).resolve().parents[3]  # the repository root
TEXT = "".join(f"row {i % 11}: a stitch in time saves {i % 9}.\n" for i in range(200))


class NullSink:
    def emit(self, event: object) -> None:
        pass


@pytest.mark.slow
def test_two_process_gloo_training_matches_a_single_process(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    corpus = CorpusRef(corpus_id="c", name="stitch", sha256="0" * 64, path=tmp_path / "corpus.txt")
    model = ModelConfig(vocab_size=CorpusData(TEXT).tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2,
                        n_embd=16, dropout=0.0)
    plan = TrainingPlan(job_id="ddp", model=model, max_steps=6, batch_size=8, learning_rate=3e-3,
                        min_learning_rate=3e-4, warmup_steps=1, weight_decay=0.1, grad_clip=1.0, eval_interval=3,
                        sample_interval=3, sample_length=8, seed=3, checkpoint_interval=0, precision="fp32",
                        device="cpu", num_processes=2)
    (tmp_path / "plan.json").write_text(plan.model_dump_json(), encoding="utf-8")
    (tmp_path / "corpus.json").write_text(corpus.model_dump_json(), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client")]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(Path(__file__).with_name("ddp_ranks.py")), "--plan", str(tmp_path / "plan.json"),
         "--corpus", str(tmp_path / "corpus.json"), "--job-dir", str(tmp_path / "job"),
         "--events", str(tmp_path / "events.jsonl"), "--summary-dir", str(tmp_path / "summary")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [json.loads((tmp_path / "summary" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["outcome"]["final_step"] for r in ranks] == [6, 6]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["events_emitted"] > 0 and ranks[1]["events_emitted"] == 0
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["kind"] == "evaluation"] == [3, 6]
    assert [e["step"] for e in events if e["kind"] == "sample"] == [0, 3, 6]
    assert sorted(p.name for p in (tmp_path / "job" / "checkpoints").iterdir()) == ["best", "latest"]

    # Ranks take slices of the same global batch, so (without dropout) DDP equals one process.
    run_training(plan.model_copy(update={"num_processes": 1}), corpus, tmp_path / "single", NullSink(),
                 lambda: False)
    ddp = load_checkpoint(tmp_path / "job" / "checkpoints" / "latest")
    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "latest")
    assert ddp.manifest.training.val_loss == pytest.approx(single.manifest.training.val_loss, abs=1e-5)
    a, b = ddp.model.state_dict(), single.model.state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)
