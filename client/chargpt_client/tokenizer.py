"""A tiny client-side character mapping (no torch): shows what the model's tokenizer does to text."""

from __future__ import annotations

from collections.abc import Sequence


class CharMapping:
    """Character <-> id by position in the sorted vocabulary, exactly as the model's CharTokenizer does."""

    def __init__(self, vocabulary: str) -> None:
        if not vocabulary or sorted(set(vocabulary)) != list(vocabulary):
            raise ValueError("vocabulary must be non-empty sorted unique characters")
        self.vocabulary = vocabulary
        self._ids = {ch: i for i, ch in enumerate(vocabulary)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def encode(self, text: str) -> list[int]:
        unknown = self.unknown(text)
        if unknown:
            raise ValueError(f"characters outside the vocabulary: {''.join(unknown)!r}")
        return [self._ids[ch] for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocabulary[i] for i in ids)

    def unknown(self, text: str) -> list[str]:
        """Distinct characters of text outside the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(ch for ch in text if ch not in self._ids))

    def filter(self, text: str) -> tuple[str, dict[str, int]]:
        """Text without out-of-vocabulary characters, and how many of each were dropped."""
        dropped: dict[str, int] = {}
        for ch in text:
            if ch not in self._ids:
                dropped[ch] = dropped.get(ch, 0) + 1
        return "".join(ch for ch in text if ch in self._ids), dropped
