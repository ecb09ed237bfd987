"""chargpt.formats.export_checkpoint and the torch-free checkpoint reader: validation, errors, atomic output."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from chargpt.errors import (
    AlreadyExistsError,
    CheckpointCorruptError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    InvalidArgumentError,
)
from chargpt.formats import ExportUnavailable, export_checkpoint
from chargpt.formats.checkpoint_dir import read_checkpoint
from tests.formats.conftest import TinyModel, write_tiny


def _copy(tiny: TinyModel, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny.path, tmp_path / "copy"))


def test_the_reader_gives_chargpts_weights_and_zero_biases(tiny: TinyModel) -> None:
    checkpoint = read_checkpoint(tiny.path)
    state = tiny.checkpoint.model.state_dict()
    assert checkpoint.vocabulary == tiny.tokenizer.vocabulary and checkpoint.arch.n_embd == 32
    assert np.array_equal(checkpoint.tensors["wte.weight"], state["wte.weight"].numpy())
    assert np.array_equal(checkpoint.layer(1, "mlp.c_fc.weight"), state["blocks.1.mlp.c_fc.weight"].numpy())
    assert "blocks.0.attn.c_attn.bias" not in state  # bias=False: the reader fills zeros for GPT-2 layouts
    assert not checkpoint.layer(0, "attn.c_attn.bias").any() and checkpoint.layer(0, "attn.c_attn.bias").shape == (96,)
    assert checkpoint.embedding_with_end_of_text().shape == (tiny.tokenizer.vocab_size + 1, 32)


def test_bad_checkpoint_directories_are_named(tiny: TinyModel, tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint at"):
        export_checkpoint(tmp_path / "missing", "hf", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match=r"not a chargpt checkpoint directory: it has no manifest\.json"):
        export_checkpoint(tmp_path / "empty", "hf", tmp_path / "out")
    copy = _copy(tiny, tmp_path)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(CheckpointCorruptError, match="sha256 mismatch"):
        export_checkpoint(copy, "hf", tmp_path / "out")
    manifest = json.loads((tiny.path / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "vocabulary": "ab"}))
    with pytest.raises(CheckpointFormatError, match="'vocabulary'"):
        export_checkpoint(copy, "hf", tmp_path / "out")
    model = {**manifest["model"], "n_embd": 64}
    shutil.copy(tiny.path / "model.safetensors", copy / "model.safetensors")
    (copy / "manifest.json").write_text(json.dumps({**manifest, "model": model}))
    with pytest.raises(CheckpointFormatError, match="do not match the manifest's model"):
        export_checkpoint(copy, "hf", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "empty"]  # no output, no temporaries


def test_an_interrupted_writers_old_twin_is_read(tiny: TinyModel, tmp_path: Path) -> None:
    shutil.copytree(tiny.path, tmp_path / "ckpt.old")
    assert read_checkpoint(tmp_path / "ckpt").path == tmp_path / "ckpt.old"


def test_bad_arguments_and_an_occupied_out_leave_nothing_written(tiny: TinyModel, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="format: 'safetensors' is not one of hf, gguf, onnx"):
        export_checkpoint(tiny.path, "safetensors", tmp_path / "out")
    with pytest.raises(InvalidArgumentError, match="gguf_types"):
        export_checkpoint(tiny.path, "gguf", tmp_path / "out", gguf_types=("q4_k",))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(AlreadyExistsError, match="not an empty directory"):
        export_checkpoint(tiny.path, "hf", occupied)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    export_checkpoint(tiny.path, "hf", occupied, overwrite=True)
    assert (occupied / "config.json").is_file() and not (occupied / "keep.txt").exists()
    (tmp_path / "empty").mkdir()
    assert (export_checkpoint(tiny.path, "hf", tmp_path / "empty") / "tokenizer.json").is_file()


def test_a_failure_mid_export_removes_its_temporary(tmp_path: Path) -> None:
    narrow = write_tiny(tmp_path / "narrow", n_embd=16)
    with pytest.raises(InvalidArgumentError, match="q8_0 quantizes rows in blocks of 32: n_embd 16"):
        export_checkpoint(narrow.path, "gguf", tmp_path / "out", gguf_types=("f32", "q8_0"))  # f32 written first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["narrow"]


def test_a_missing_library_is_named_with_the_extra_to_install(tiny: TinyModel, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers now raises ModuleNotFoundError
    with pytest.raises(ExportUnavailable, match=r"tokenizers is not installed \(pip install 'chargpt\[export\]'\)"):
        export_checkpoint(tiny.path, "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
