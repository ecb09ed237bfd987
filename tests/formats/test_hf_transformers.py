"""The Hugging Face export in transformers and CTranslate2: same logits, same greedy text, exact tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import ctranslate2
import pytest
import torch
from ctranslate2.converters import TransformersConverter
from transformers import AutoModelForCausalLM, AutoTokenizer

from chargpt.formats import export_checkpoint
from chargpt.formats.checkpoint_dir import END_OF_TEXT
from chargpt.sampling_params import SAMPLING_PRESETS, SamplingPreset
from tests.formats.conftest import GREEDY_CHARS, PROMPT, TinyModel, write_tiny


@pytest.fixture(scope="module")
def hf_dir(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_checkpoint(tiny.path, "hf", tmp_path_factory.mktemp("hf") / "export")


def test_logits_match_within_1e_4_and_the_end_of_text_logit_is_zero(tiny: TinyModel, hf_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    assert model.config.activation_function == "gelu" and model.config.tie_word_embeddings
    text = PROMPT + "".join(sorted(tiny.tokenizer.vocabulary))
    with torch.no_grad():
        logits = model(torch.tensor([tiny.tokenizer.encode(text)])).logits[0]
    V = tiny.tokenizer.vocab_size
    assert logits.shape == (len(text), V + 1)
    assert (logits[:, :V] - tiny.logits(text)).abs().max() < 1e-4
    assert torch.equal(logits[:, V], torch.zeros(len(text)))  # the zero embedding row through the tied head


def test_bias_true_models_keep_their_biases(tmp_path: Path) -> None:
    biased = write_tiny(tmp_path / "biased", seed=3, bias=True)
    model = AutoModelForCausalLM.from_pretrained(export_checkpoint(biased.path, "hf", tmp_path / "hf")).eval()
    with torch.no_grad():
        logits = model(torch.tensor([biased.tokenizer.encode(PROMPT)])).logits[0, :, :-1]
    assert (logits - biased.logits(PROMPT)).abs().max() < 1e-4


def test_generate_gives_chargpts_200_greedy_characters(tiny: TinyModel, hf_dir: Path) -> None:
    model, tokenizer = AutoModelForCausalLM.from_pretrained(hf_dir).eval(), AutoTokenizer.from_pretrained(hf_dir)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=GREEDY_CHARS, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1]:])
    assert text == tiny.greedy(PROMPT)
    assert len(set(text)) > 5  # a real continuation, not one character repeated


def test_tokenizer_round_trips_every_vocabulary_character(tiny: TinyModel, hf_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)  # no custom code: tokenizer.json through `tokenizers`
    for i, char in enumerate(tiny.tokenizer.vocabulary):
        assert tokenizer(char).input_ids == [i], repr(char)
        assert tokenizer.decode([i]) == char
    text = "  a\t\tb\n\n c , é—€😀Ġ ."  # runs of spaces, tabs, newlines; the space before a comma stays
    assert tokenizer(text).input_ids == tiny.tokenizer.encode(text)
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert tokenizer.decode([*tiny.tokenizer.encode(text), tiny.tokenizer.vocab_size], skip_special_tokens=True) == text
    with pytest.raises(Exception, match="UNK"):  # an unknown character is refused, as chargpt refuses it
        tokenizer("aZb")


def test_generation_config_is_the_balanced_preset_and_suppresses_end_of_text(hf_dir: Path) -> None:
    config = json.loads((hf_dir / "generation_config.json").read_text())
    balanced = SAMPLING_PRESETS[SamplingPreset.BALANCED]
    assert (config["temperature"], config["top_k"], config["do_sample"]) == (balanced.temperature, balanced.top_k,
                                                                               True)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    assert config["suppress_tokens"] == [tokenizer.convert_tokens_to_ids(END_OF_TEXT)] == [len(tokenizer) - 1]


def test_model_card_names_corpus_sha256_losses_and_lineage(tiny: TinyModel, hf_dir: Path) -> None:
    card = (hf_dir / "README.md").read_text()
    for fact in ("sonnets", "c0ffee", "cd" * 32, tiny.checkpoint.manifest.weights.sha256, "1.2500", "1.5000",
                 "job parentjob (best) at step 40", "job123, 7", "library_name: transformers"):
        assert fact in card, fact


def test_ctranslate2_conversion_gives_the_same_greedy_text(tiny: TinyModel, hf_dir: Path, tmp_path: Path) -> None:
    TransformersConverter(str(hf_dir)).convert(str(tmp_path / "ct2"))
    generator = ctranslate2.Generator(str(tmp_path / "ct2"), device="cpu")
    result = generator.generate_batch([list(PROMPT)], max_length=GREEDY_CHARS, sampling_topk=1,
                                      include_prompt_in_result=False)
    assert "".join(result[0].sequences[0]) == tiny.greedy(PROMPT)
