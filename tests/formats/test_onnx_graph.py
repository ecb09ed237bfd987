"""The ONNX export in ONNX Runtime: the same logits, whole or through the key/value cache, and the same greedy text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from chargpt.errors import VocabularyError
from chargpt.formats import export_checkpoint
from chargpt.formats.onnx_decode import OnnxDecoder
from tests.formats.conftest import PROMPT, TinyModel


@pytest.fixture(scope="module")
def decoder(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> OnnxDecoder:
    return OnnxDecoder(export_checkpoint(tiny.path, "onnx", tmp_path_factory.mktemp("onnx") / "export"))


def test_the_graph_is_valid_with_cache_inputs_and_outputs(decoder: OnnxDecoder, tiny: TinyModel) -> None:
    inputs = [i.name for i in decoder.session.get_inputs()]
    outputs = [o.name for o in decoder.session.get_outputs()]
    assert inputs == ["input_ids", "past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key",
                      "past_key_values.1.value"]
    assert outputs == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]


def test_logits_match_within_1e_4_whole_and_through_the_cache(decoder: OnnxDecoder, tiny: TinyModel) -> None:
    ids = np.array([tiny.tokenizer.encode(PROMPT)])
    expected = tiny.logits(PROMPT).numpy()
    whole, _ = decoder.forward(ids, decoder.empty_cache())
    assert np.abs(whole[0] - expected).max() < 1e-4
    split = 7  # a prefill of 7 characters, then the rest in one call, then one character at a time
    first, past = decoder.forward(ids[:, :split], decoder.empty_cache())
    rest, past = decoder.forward(ids[:, split:-3], past)
    steps = []
    for i in range(ids.shape[1] - 3, ids.shape[1]):
        step, past = decoder.forward(ids[:, i:i + 1], past)
        steps.append(step)
    assert past[0].shape == (1, 2, ids.shape[1], 16)
    assert np.abs(np.concatenate([first, rest, *steps], axis=1)[0] - expected).max() < 1e-4


def test_greedy_decoding_through_the_cache_gives_chargpts_text(decoder: OnnxDecoder, tiny: TinyModel) -> None:
    assert decoder.greedy(PROMPT, 200) == tiny.greedy(PROMPT)


def test_the_decoder_refuses_unknown_characters_and_overlong_requests(decoder: OnnxDecoder) -> None:
    with pytest.raises(VocabularyError, match="'Z'"):
        decoder.greedy("aZ", 5)
    with pytest.raises(ValueError, match="exceed the model's context"):
        decoder.greedy("a", 256)


def test_the_file_passes_the_onnx_checker(decoder: OnnxDecoder, tiny: TinyModel, tmp_path: Path) -> None:
    model = export_checkpoint(tiny.path, "onnx", tmp_path / "again") / "model.onnx"
    onnx.checker.check_model(str(model), full_check=True)
