"""The GGUF export in llama.cpp (through llama-cpp-python): chargpt's characters as tokens, and its greedy text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
from llama_cpp import Llama

from chargpt.formats import export_checkpoint
from chargpt.formats.llama_gguf import byte_level_vocabulary
from tests.formats.conftest import GREEDY_CHARS, PROMPT, TinyModel, write_tiny

# llama.cpp's gpt2 graph uses the tanh GELU: logits differ from chargpt's (exact GELU) by about 1e-2
TANH_GELU_TOLERANCE = 0.1


def load(path: Path) -> Llama:
    return Llama(str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False)  # logits_all: fills .scores


@pytest.fixture(scope="module")
def gguf_dir(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_checkpoint(tiny.path, "gguf", tmp_path_factory.mktemp("gguf") / "export",
                             gguf_types=("f32", "f16", "q8_0"))


@pytest.fixture(scope="module")
def f32(gguf_dir: Path) -> Iterator[Llama]:
    llm = load(gguf_dir / "model-f32.gguf")
    yield llm
    llm.close()


def greedy(llm: Llama, prompt: str, n: int, vocab_size: int) -> str:
    """llama.cpp's argmax over chargpt's characters, one evaluated token at a time."""
    llm.reset()
    llm.eval(llm.tokenize(prompt.encode(), add_bos=False))
    out: list[int] = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1][:vocab_size])))
        llm.eval(out[-1:])
    return llm.detokenize(out).decode()


def test_llama_cpp_tokenizes_text_into_chargpts_characters(f32: Llama, tiny: TinyModel) -> None:
    vocabulary = tiny.tokenizer.vocabulary
    for text in (vocabulary, vocabulary[::-1], PROMPT, "  a\t\tb\n\n c , é—€😀Ġ .", "éé——😀😀ĠĠ"):
        ids = f32.tokenize(text.encode(), add_bos=False)
        assert ids == tiny.tokenizer.encode(text), repr(text)
        assert f32.detokenize(ids).decode() == text


def test_a_character_outside_the_vocabulary_is_dropped(f32: Llama, tiny: TinyModel) -> None:
    # "Z" is ASCII; "ñ" shares its lead byte with "é", "…" its first two bytes with "—": none joins a neighbour
    assert f32.tokenize("aZbñc…d".encode(), add_bos=False) == tiny.tokenizer.encode("abcd")


def test_logits_agree_to_the_tanh_gelu_difference_and_end_of_text_is_zero(f32: Llama, tiny: TinyModel) -> None:
    f32.reset()
    f32.eval(f32.tokenize(PROMPT.encode(), add_bos=False))
    logits, V = f32.scores[f32.n_tokens - 1], tiny.tokenizer.vocab_size
    assert logits.shape == (V + 1,) and logits[V] == 0.0 and f32.token_eos() == V
    assert np.abs(logits[:V] - tiny.logits(PROMPT)[-1].numpy()).max() < TANH_GELU_TOLERANCE


def test_f32_gives_chargpts_greedy_text(f32: Llama, tiny: TinyModel) -> None:
    assert greedy(f32, PROMPT, GREEDY_CHARS, tiny.tokenizer.vocab_size) == tiny.greedy(PROMPT)


def test_create_completion_as_the_readme_calls_it(f32: Llama, tiny: TinyModel) -> None:
    out = f32.create_completion(PROMPT, max_tokens=100, temperature=0.0, repeat_penalty=1.0,
                                logit_bias={f32.token_eos(): -1e9})
    assert out["choices"][0]["text"] == tiny.greedy(PROMPT, 100)


def test_f16_gives_chargpts_greedy_text_too(gguf_dir: Path, tiny: TinyModel) -> None:
    llm = load(gguf_dir / "model-f16.gguf")
    assert greedy(llm, PROMPT, GREEDY_CHARS, tiny.tokenizer.vocab_size) == tiny.greedy(PROMPT)
    llm.close()


def test_q8_0_loads_and_stays_near_chargpt(gguf_dir: Path, tiny: TinyModel) -> None:
    """q8_0 (matrices in 8 bits; llama.cpp also quantizes the activations it multiplies them with) moves these
    random weights' logits by about 0.4: the first character agrees, longer greedy text drifts."""
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(gguf_dir / "model-q8_0.gguf").tensors}
    assert types["blk.0.ffn_down.weight"] == "Q8_0" and types["blk.0.ffn_down.bias"] == "F32"
    llm = load(gguf_dir / "model-q8_0.gguf")
    llm.eval(llm.tokenize(PROMPT.encode(), add_bos=False))
    V = tiny.tokenizer.vocab_size
    assert np.abs(llm.scores[llm.n_tokens - 1][:V] - tiny.logits(PROMPT)[-1].numpy()).max() < 1.0
    assert greedy(llm, PROMPT, 1, V) == tiny.greedy(PROMPT, 1)
    llm.close()


def test_an_ascii_vocabulary_gets_one_harmless_merge(tmp_path: Path) -> None:
    ascii_model = write_tiny(tmp_path / "ascii", vocab="\n !abcdefgh")
    tokens, merges = byte_level_vocabulary(ascii_model.tokenizer.vocabulary)
    assert tokens[:3] == ["Ċ", "Ġ", "!"] and tokens[-1] == "<|endoftext|>" and len(merges) == 1
    llm = load(export_checkpoint(ascii_model.path, "gguf", tmp_path / "out", gguf_types=("f32",)) / "model-f32.gguf")
    assert llm.tokenize(b"a b\nc", add_bos=False) == ascii_model.tokenizer.encode("a b\nc")
    assert greedy(llm, "abc ", 100, 11) == ascii_model.greedy("abc ", 100)
    llm.close()


def test_multi_byte_characters_get_left_to_right_merges() -> None:
    tokens, merges = byte_level_vocabulary("é—")
    assert tokens == ["Ã©", "âĢĶ", "<|endoftext|>"]
    assert merges == ["Ã ©", "â Ģ", "âĢ Ķ"]
