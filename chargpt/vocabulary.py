"""The character map (no torch): character <-> id by position in a sorted vocabulary, as every model uses it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from chargpt.errors import InvalidArgumentError, VocabularyError


class CharMapping:
    """Maps each character of a fixed vocabulary (sorted unique characters) to its index; the model's
    CharTokenizer builds on it and the client shows with it what the model does to text."""

    def __init__(self, vocabulary: Iterable[str]) -> None:
        chars = list(vocabulary)
        if any(len(c) != 1 for c in chars):
            raise InvalidArgumentError("vocabulary", "every entry must be a single character")
        if not chars or sorted(set(chars)) != chars:
            raise InvalidArgumentError("vocabulary", "must be non-empty sorted unique characters")
        self.vocabulary = "".join(chars)
        self._index = {c: i for i, c in enumerate(chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of text outside the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(c for c in text if c not in self._index))

    def encode(self, text: str, field: str = "text") -> list[int]:
        """Token ids of text; raises VocabularyError (a ValueError) naming any unknown characters."""
        try:
            return [self._index[c] for c in text]
        except KeyError:
            raise VocabularyError(self.unknown(text), field=field) from None

    def decode(self, ids: Sequence[int]) -> str:
        vocab = self.vocabulary
        return "".join(vocab[i] for i in ids)

    def filter(self, text: str) -> tuple[str, dict[str, int]]:
        """Text without out-of-vocabulary characters, and how many of each were dropped."""
        dropped: dict[str, int] = {}
        for c in text:
            if c not in self._index:
                dropped[c] = dropped.get(c, 0) + 1
        return "".join(c for c in text if c in self._index), dropped
