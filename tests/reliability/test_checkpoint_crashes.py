"""A process SIGKILLed at random moments while it rewrites a checkpoint: the directory always loads afterwards."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chargpt.core.checkpoint import load_checkpoint, save_checkpoint
from tests.inference_service.conftest import write_checkpoint
from tests.support.procs import ROOT

WRITER = """
import sys, itertools
from pathlib import Path
import torch
from chargpt.core.checkpoint import TrainingInfo, load_checkpoint, save_checkpoint
ckpt = load_checkpoint(sys.argv[1])
print("ready", flush=True)
for step in itertools.count(1):
    with torch.no_grad():
        for p in ckpt.model.parameters():
            p.add_(0.001)
    save_checkpoint(Path(sys.argv[1]), ckpt.model, ckpt.tokenizer, TrainingInfo(step=step),
                    write_extra=lambda tmp: (tmp / "resume.json").write_text('{"step": %d}' % step))
"""


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_never_breaks_the_checkpoint(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "latest", n_embd=64, n_layer=2)  # ~0.4 MB: writes take a while
    rng = random.Random(0)
    steps = []
    for _ in range(4):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                                  env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        try:
            assert writer.stdout is not None and writer.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            writer.kill()
            writer.wait(30)
        loaded = load_checkpoint(path)  # verifies the hash and the shapes
        steps.append(loaded.manifest.training.step)
        extra = path / "resume.json"
        assert not extra.exists() or f'"step": {loaded.manifest.training.step}' in extra.read_text()
    assert max(steps) > 0, "the writer never completed a checkpoint: the test proved nothing"
    # leftovers of interrupted writes do not stop the next write, and it cleans up after itself
    checkpoint = load_checkpoint(path)
    save_checkpoint(path, checkpoint.model, checkpoint.tokenizer, checkpoint.manifest.training)
    assert load_checkpoint(path).manifest.weights.sha256 == checkpoint.manifest.weights.sha256
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]
