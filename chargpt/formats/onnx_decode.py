"""Greedy decoding of an ONNX export with ONNX Runtime, one character at a time through its key/value cache."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from chargpt.errors import VocabularyError

MODEL_FILE, METADATA_FILE = "model.onnx", "chargpt.json"  # as chargpt.formats.onnx_graph writes them


class OnnxDecoder:
    """An ONNX export's session, vocabulary and cache shapes."""

    def __init__(self, directory: str | os.PathLike[str], providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime

        directory = Path(directory)
        meta = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
        self.vocabulary: str = meta["vocabulary"]
        self.n_layer, self.n_head, self.head_size = meta["n_layer"], meta["n_head"], meta["head_size"]
        self.block_size: int = meta["block_size"]
        self.session = onnxruntime.InferenceSession(str(directory / MODEL_FILE), providers=list(providers))
        self._index = {c: i for i, c in enumerate(self.vocabulary)}

    def encode(self, text: str) -> list[int]:
        unknown = [c for c in dict.fromkeys(text) if c not in self._index]
        if unknown:
            raise VocabularyError(unknown)
        return [self._index[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocabulary[i] for i in ids)

    def empty_cache(self, batch_size: int = 1) -> list[np.ndarray]:
        """past_key_values for the first call: every layer's keys and values with no positions yet."""
        shape = (batch_size, self.n_head, 0, self.head_size)
        return [np.zeros(shape, np.float32) for _ in range(2 * self.n_layer)]

    def forward(self, ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (batch, sequence, vocab) of `ids` after the cached positions, and the cache with them appended."""
        names = [i.name for i in self.session.get_inputs()]
        outputs = self.session.run(None, dict(zip(names, [ids.astype(np.int64), *past], strict=True)))
        return outputs[0], outputs[1:]

    def greedy(self, prompt: str, max_new_tokens: int) -> str:
        """The most likely continuation of a non-empty prompt, decoded one character per call."""
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("greedy decoding needs a prompt of at least one character")
        if len(ids) + max_new_tokens > self.block_size:
            raise ValueError(f"{len(ids)} prompt + {max_new_tokens} new characters exceed the model's context "
                             f"({self.block_size})")
        logits, past = self.forward(np.array([ids]), self.empty_cache())
        generated: list[int] = []
        for _ in range(max_new_tokens):
            generated.append(int(logits[0, -1].argmax()))
            if len(generated) < max_new_tokens:
                logits, past = self.forward(np.array([generated[-1:]]), past)
        return self.decode(generated)
