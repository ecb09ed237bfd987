"""The corpus as token tensors: the notebook's 90/10 split, seeded resumable batches, fixed evaluation windows."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from chargpt.core.tokenizer import CharTokenizer
from chargpt.errors import InvalidArgumentError
from chargpt.text import read_text

TRAIN_FRACTION = 0.9
MIN_SPLIT_TOKENS = 2  # each split needs at least one (input, target) pair


def mix_seed(*parts: int | str) -> int:
    """A well-spread 63-bit seed from several parts, stable across processes and Python versions."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def encode_text(text: str, tokenizer: CharTokenizer) -> torch.Tensor:
    """Token ids (int32) of text, vectorised: a corpus of many megabytes encodes in well under a second."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocab_codes = np.frombuffer(tokenizer.vocabulary.encode("utf-32-le"), dtype=np.uint32)
    ids = np.searchsorted(vocab_codes, codes)  # the vocabulary is sorted by code point
    return torch.from_numpy(ids.astype(np.int32))


class CorpusData:
    """A corpus split into train (first 90%) and validation (last 10%) token tensors."""

    def __init__(self, text: str, extra_characters: str = "") -> None:
        # A fine-tune's vocabulary also keeps its parent's characters (extra_characters), so it can still read them.
        self.tokenizer = CharTokenizer.from_text(text + extra_characters)
        data = encode_text(text, self.tokenizer)
        n_train = int(TRAIN_FRACTION * len(data))
        self.train, self.val = data[:n_train], data[n_train:]
        if len(self.train) < MIN_SPLIT_TOKENS or len(self.val) < MIN_SPLIT_TOKENS:
            raise InvalidArgumentError("corpus", f"corpus of {len(data)} characters is too small to split "
                                                 "90/10 into training and validation text")
        self.first_char = "\n" if "\n" in self.tokenizer.vocabulary else text[0]

    @classmethod
    def from_file(cls, path: Path, extra_characters: str = "") -> CorpusData:
        return cls(read_text(path), extra_characters)  # exactly the uploaded characters: no newline translation

    def context_length(self, block_size: int) -> int:
        """Training sequence length: the model's block, unless the training split is shorter."""
        return min(block_size, len(self.train) - 1)

    def batch_starts(self, size: int, block_size: int, seed: int) -> torch.Tensor:
        """Start positions of `size` random training windows; a function of `seed` alone.

        A job derives the seed from (seed, step), draws the whole batch and gives each rank and micro-batch
        its slice, so the data a step sees does not depend on the process count or gradient accumulation,
        and a resumed job replays the exact data order without storing any sampler state.
        """
        T = self.context_length(block_size)
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(len(self.train) - T, (size,), generator=gen)

    def windows(self, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training windows at `starts`: (inputs, next-character targets), both (len(starts), T) int64."""
        T = self.context_length(block_size)
        rows = self.train[starts[:, None] + torch.arange(T + 1)].long()  # (size, T+1)
        return rows[:, :-1], rows[:, 1:]

    def batch(self, size: int, block_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.windows(self.batch_starts(size, block_size, seed), block_size)

def split_windows(data: torch.Tensor, block_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole split as non-overlapping (inputs, targets) windows of block_size; the tail as a shorter one.

    Every token but the first is a target exactly once, so the token-weighted mean loss over these windows
    is the loss of the whole split.
    """
    T = min(block_size, len(data) - 1)
    n_full = (len(data) - 1) // T
    windows: list[tuple[torch.Tensor, torch.Tensor]] = []
    if n_full:
        body = data[: n_full * T + 1].long()
        windows.append((body[:-1].view(n_full, T), body[1:].view(n_full, T)))
    tail = data[n_full * T:].long()
    if len(tail) > 1:
        windows.append((tail[:-1][None], tail[1:][None]))
    return windows


def train_subset_windows(data: torch.Tensor, block_size: int, count: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` fixed windows spread evenly over the training split: a deterministic train-loss estimate."""
    T = min(block_size, len(data) - 1)
    last_start = len(data) - T - 1
    count = max(1, min(count, last_start + 1))
    starts = torch.unique(torch.linspace(0, last_start, count).round().long())
    rows = data[starts[:, None] + torch.arange(T + 1)].long()
    return rows[:, :-1], rows[:, 1:]
