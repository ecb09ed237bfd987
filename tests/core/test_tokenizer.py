"""Character tokenizer: vocabulary, round trip, unknown characters."""

import pytest

from chargpt.core.tokenizer import CharTokenizer
from chargpt.errors import InvalidArgumentError, VocabularyError


def test_vocabulary_is_sorted_unique_characters() -> None:
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocabulary == " dehlorw"
    assert tok.vocab_size == 8


def test_round_trip() -> None:
    text = "To be, or not to be: that is the question.\nÆsop — naïve 🙂"
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_unknown_characters_are_named() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(VocabularyError) as err:
        tok.encode("abxcyx", field="prompt")
    assert err.value.characters == ["x", "y"]
    assert "'x'" in str(err.value) and "'y'" in str(err.value) and "prompt" in str(err.value)


@pytest.mark.parametrize("vocab", [[], ["b", "a"], ["a", "a"], ["ab"]])
def test_bad_vocabularies_are_rejected(vocab: list[str]) -> None:
    with pytest.raises(InvalidArgumentError):
        CharTokenizer(vocab)
