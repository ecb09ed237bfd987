"""The client's character map: chargpt.vocabulary.CharMapping, the one the model's CharTokenizer builds on."""

from chargpt.vocabulary import CharMapping

__all__ = ["CharMapping"]
