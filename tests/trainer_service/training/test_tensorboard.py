"""TensorBoard from the real engine, read back with TensorBoard's own reader: series, samples, heatmaps, resume."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_support import TEXT, Recorder, make_plan, never  # type: ignore[import-not-found]
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from trainer_service.training import loop
from trainer_service.training.api import TENSORBOARD_DIR, CorpusRef, ProgressUpdate, tensorboard_run_name
from trainer_service.training.loop import run_training
from trainer_service.training.tensorboard import TILE_PIXELS, heatmap_grid

SCALARS = {"loss/step", "loss/train", "loss/val", "optim/learning_rate", "optim/grad_norm",
           "perf/tokens_per_second"}


class Crash(Exception):
    """Stands in for a killed worker: training ends without writing a checkpoint."""


def crash_after(steps: int) -> Callable[[], bool]:
    calls = [0]

    def should_stop() -> bool:
        calls[0] += 1
        if calls[0] > steps:
            raise Crash
        return False
    return should_stop


def read_run(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def steps_of(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def texts(acc: EventAccumulator, tag: str) -> dict[int, str]:
    return {e.step: tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors(tag)}


@pytest.fixture
def corpus(tmp_path: Path) -> CorpusRef:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return CorpusRef(corpus_id="c1", name="pigs", sha256="ab" * 32, path=path)


@pytest.fixture
def every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "PROGRESS_INTERVAL_S", 0.0)  # a progress report (and scalar point) per step


def test_a_job_logs_its_series_samples_and_heatmaps(tmp_path: Path, corpus: CorpusRef, every_step: None) -> None:
    plan = make_plan(max_steps=20, eval_interval=10, sample_interval=10, tensorboard_run="pigs-run")
    sink = Recorder()
    run_training(plan, corpus, tmp_path, sink, never)
    acc = read_run(tmp_path / TENSORBOARD_DIR / "pigs-run")

    assert set(acc.Tags()["scalars"]) == SCALARS
    for tag in ("loss/step", "optim/learning_rate", "optim/grad_norm", "perf/tokens_per_second"):
        assert steps_of(acc, tag) == list(range(1, 21)), tag
    assert steps_of(acc, "loss/train") == steps_of(acc, "loss/val") == [10, 20]
    assert all(math.isfinite(e.value) for tag in SCALARS for e in acc.Scalars(tag))
    progress = sink.of(ProgressUpdate)
    assert [e.value for e in acc.Scalars("optim/grad_norm")] == pytest.approx([p.grad_norm for p in progress])
    assert [e.value for e in acc.Scalars("loss/step")] == pytest.approx([p.loss for p in progress])
    assert acc.Scalars("loss/val")[-1].value < acc.Scalars("loss/step")[0].value  # it learned

    samples = texts(acc, "samples/text_summary")
    assert sorted(samples) == [0, 10, 20] and all(s.count("```") == 2 for s in samples.values())
    assert "job-1" in texts(acc, "job/text_summary")[0]

    images = acc.Images("attention")
    assert [i.step for i in images] == [10, 20]
    T, scale = 32, TILE_PIXELS // 32  # block_size 32; n_layer 2, n_head 2 tiles
    assert (images[0].height, images[0].width) == (2 * T * scale + 1, 2 * T * scale + 1)
    image = pytest.importorskip("PIL.Image")  # Pillow comes with the plot extra (matplotlib)
    pixels = np.asarray(image.open(io.BytesIO(images[-1].encoded_image_string)).convert("L"))
    assert pixels[0, 0] == 255 and pixels[0, scale] == 0  # the first character attends only to itself


def test_tensorboard_off_writes_nothing(tmp_path: Path, corpus: CorpusRef) -> None:
    run_training(make_plan(max_steps=4, eval_interval=2), corpus, tmp_path, Recorder(), never)
    assert (tmp_path / "checkpoints").is_dir()
    assert not (tmp_path / TENSORBOARD_DIR).exists()


def test_a_resumed_job_shows_every_step_once(tmp_path: Path, corpus: CorpusRef, every_step: None) -> None:
    plan = make_plan(max_steps=20, eval_interval=5, sample_interval=0, tensorboard_run="resumed")
    with pytest.raises(Crash):  # dies after step 17; its last checkpoint is the one at the evaluation at 15
        run_training(plan, corpus, tmp_path, Recorder(), crash_after(17))
    run_training(plan, corpus, tmp_path, Recorder(), never)  # resumes from 15 and logs 16 and 17 again
    runs = list((tmp_path / TENSORBOARD_DIR / "resumed").iterdir())
    assert len(runs) == 2  # the resumed process appended its own event file
    acc = read_run(tmp_path / TENSORBOARD_DIR / "resumed")
    assert steps_of(acc, "loss/val") == [5, 10, 15, 20]
    assert steps_of(acc, "loss/step") == list(range(1, 21))


def test_run_names_are_one_safe_path_component() -> None:
    assert tensorboard_run_name("Shakespeare, small (v2)") == "Shakespeare-small-v2"
    assert tensorboard_run_name("../../etc") == "etc"
    assert tensorboard_run_name("") == tensorboard_run_name("///") == "run"
    assert tensorboard_run_name("Шекспир") == "Шекспир"
    assert len(tensorboard_run_name("x" * 300)) == 64


def test_heatmap_grid_tiles_layers_by_heads() -> None:
    weights = torch.rand(3, 4, 8, 8)
    grid = heatmap_grid(weights)
    scale = TILE_PIXELS // 8
    assert grid.shape == (3 * 8 * scale + 2, 4 * 8 * scale + 3)  # one-pixel lines between tiles
    top, left = 2 * (8 * scale + 1), 1 * (8 * scale + 1)  # layer 2, head 1
    assert grid[top + 5 * scale, left + 3 * scale] == pytest.approx(float(weights[2, 1, 5, 3]))
