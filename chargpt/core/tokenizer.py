"""Character-level tokenizer: the vocabulary is the sorted set of characters in the corpus."""

from __future__ import annotations

from chargpt.vocabulary import CharMapping


class CharTokenizer(CharMapping):
    """The model's tokenizer: the torch-free character map (chargpt.vocabulary), built from a corpus, compared
    and hashed by its vocabulary."""

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary of a corpus."""
        return cls(sorted(set(text)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.vocabulary == self.vocabulary

    def __hash__(self) -> int:
        return hash(self.vocabulary)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
