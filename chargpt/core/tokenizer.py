"""Character-level tokenizer: the vocabulary is the sorted set of characters in the corpus."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from chargpt.errors import InvalidArgumentError, VocabularyError


class CharTokenizer:
    """Maps each character of a fixed vocabulary to its index in sorted order."""

    def __init__(self, vocabulary: Iterable[str]) -> None:
        chars = list(vocabulary)
        if not chars:
            raise InvalidArgumentError("vocabulary", "must not be empty")
        if any(len(c) != 1 for c in chars):
            raise InvalidArgumentError("vocabulary", "every entry must be a single character")
        if sorted(set(chars)) != chars:
            raise InvalidArgumentError("vocabulary", "must be sorted unique characters")
        self.vocabulary = "".join(chars)
        self._index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary of a corpus."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of text outside the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(c for c in text if c not in self._index))

    def encode(self, text: str, field: str = "text") -> list[int]:
        """Token ids of text; raises VocabularyError naming any unknown characters."""
        try:
            return [self._index[c] for c in text]
        except KeyError:
            raise VocabularyError(self.unknown_characters(text), field=field) from None

    def decode(self, ids: Sequence[int]) -> str:
        vocab = self.vocabulary
        return "".join(vocab[i] for i in ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.vocabulary == self.vocabulary

    def __hash__(self) -> int:
        return hash(self.vocabulary)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
