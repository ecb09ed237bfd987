"""Checkpoint format: round trip, atomic writes, and clear errors for every kind of bad checkpoint."""

import json
from pathlib import Path

import pytest
import torch

from chargpt.core.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    TrainingInfo,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)
from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT
from chargpt.core.tokenizer import CharTokenizer
from chargpt.errors import CheckpointCorruptError, CheckpointFormatError, CheckpointNotFoundError


@pytest.fixture
def tiny() -> tuple[GPT, CharTokenizer]:
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("hello, world!\n")
    return GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)), tok


def test_round_trip_preserves_outputs_and_metadata(tmp_path: Path, tiny: tuple[GPT, CharTokenizer]) -> None:
    model, tok = tiny
    info = TrainingInfo(job_id="j1", corpus_id="c" * 64, corpus_name="hello", step=42, train_loss=1.5,
                        val_loss=1.7)
    manifest = save_checkpoint(tmp_path / "best", model, tok, info)
    loaded = load_checkpoint(tmp_path / "best")
    idx = torch.tensor([tok.encode("hello")])
    model.eval()
    assert torch.equal(model(idx)[0], loaded.model(idx)[0])
    assert loaded.tokenizer == tok
    assert loaded.manifest.training.step == 42 and loaded.manifest.training.corpus_name == "hello"
    assert loaded.manifest.training.library_versions["torch"]
    assert manifest.weights.sha256 == loaded.manifest.weights.sha256
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.wte.weight.data_ptr()


def test_manifest_is_plain_json(tmp_path: Path, tiny: tuple[GPT, CharTokenizer]) -> None:
    save_checkpoint(tmp_path / "ck", *tiny)
    raw = json.loads((tmp_path / "ck" / MANIFEST_FILE).read_text())
    assert raw["format_version"] == 1 and raw["model"]["n_embd"] == 16 and raw["vocabulary"]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path: Path, tiny: tuple[GPT, CharTokenizer]) -> None:
    model, tok = tiny
    save_checkpoint(tmp_path / "latest", model, tok, TrainingInfo(step=1))
    save_checkpoint(tmp_path / "latest", model, tok, TrainingInfo(step=2))
    assert read_manifest(tmp_path / "latest").training.step == 2
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_crash_during_write_keeps_previous_checkpoint(tmp_path: Path, tiny: tuple[GPT, CharTokenizer]) -> None:
    model, tok = tiny
    save_checkpoint(tmp_path / "latest", model, tok, TrainingInfo(step=1))

    def crash(_: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "latest", model, tok, TrainingInfo(step=2), write_extra=crash)
    assert load_checkpoint(tmp_path / "latest").manifest.training.step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_reader_falls_back_to_old_during_swap(tmp_path: Path, tiny: tuple[GPT, CharTokenizer]) -> None:
    save_checkpoint(tmp_path / "latest", *tiny)
    (tmp_path / "latest").rename(tmp_path / "latest.old")  # a writer died between its two renames
    assert load_checkpoint(tmp_path / "latest").path.name == "latest.old"


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError):
        load_checkpoint(tmp_path / "nope")


def test_missing_weights(tmp_path: Path, tiny: tuple[GPT, CharTokenizer]) -> None:
    save_checkpoint(tmp_path / "ck", *tiny)
    (tmp_path / "ck" / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointNotFoundError, match="weights"):
        load_checkpoint(tmp_path / "ck")


def test_tampered_weights_fail_the_hash(tmp_path: Path, tiny: tuple[GPT, CharTokenizer]) -> None:
    save_checkpoint(tmp_path / "ck", *tiny)
    weights = tmp_path / "ck" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match="sha256"):
        load_checkpoint(tmp_path / "ck")


def _edit_manifest(path: Path, **changes: object) -> None:
    raw = json.loads((path / MANIFEST_FILE).read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            raw[section][field] = value
        else:
            raw[section] = value
    (path / MANIFEST_FILE).write_text(json.dumps(raw))


def test_unknown_format_version(tmp_path: Path, tiny: tuple[GPT, CharTokenizer]) -> None:
    save_checkpoint(tmp_path / "ck", *tiny)
    _edit_manifest(tmp_path / "ck", format_version=99)
    with pytest.raises(CheckpointFormatError, match="format_version"):
        load_checkpoint(tmp_path / "ck")


def test_shapes_that_do_not_match_the_config(tmp_path: Path, tiny: tuple[GPT, CharTokenizer]) -> None:
    save_checkpoint(tmp_path / "ck", *tiny)
    _edit_manifest(tmp_path / "ck", model__block_size=32)
    with pytest.raises(CheckpointFormatError, match="shapes"):
        load_checkpoint(tmp_path / "ck")


def test_garbage_manifest(tmp_path: Path, tiny: tuple[GPT, CharTokenizer]) -> None:
    save_checkpoint(tmp_path / "ck", *tiny)
    (tmp_path / "ck" / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(CheckpointFormatError, match="JSON"):
        load_checkpoint(tmp_path / "ck")


def test_weights_path_cannot_escape_the_directory(tmp_path: Path, tiny: tuple[GPT, CharTokenizer]) -> None:
    save_checkpoint(tmp_path / "ck", *tiny)
    (tmp_path / WEIGHTS_FILE).write_bytes((tmp_path / "ck" / WEIGHTS_FILE).read_bytes())
    _edit_manifest(tmp_path / "ck", weights__file="../" + WEIGHTS_FILE)
    with pytest.raises(CheckpointNotFoundError):
        load_checkpoint(tmp_path / "ck")
