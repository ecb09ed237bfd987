"""ReadCorpus: a character range of a stored corpus, of its training split or of its validation split."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from chargpt.errors import InvalidArgumentError
from chargpt.text import read_chars
from trainer_service.store_records import CorpusRecord

# 256 Ki characters are at most 1 MiB of UTF-8: well inside gRPC's default 4 MiB message limit.
MAX_READ_CHARS = 262_144
SPLITS = ("all", "train", "validation")


@dataclass(frozen=True)
class CorpusText:
    split: str
    offset: int  # from the start of the split
    split_chars: int
    text: str


def split_range(record: CorpusRecord, split: str) -> tuple[int, int]:
    """(first character, characters) of a split in the whole text; the split is the store's 90/10 one."""
    if split == "all":
        return 0, record.num_chars
    if split == "train":
        return 0, record.train_chars
    if split == "validation":
        return record.train_chars, record.val_chars
    raise InvalidArgumentError("split", f"must be one of {', '.join(SPLITS)} (got {split!r})")


def resolve_range(offset: int, length: int, split_chars: int) -> tuple[int, int]:
    """(offset from the split's start, characters to read); a negative offset counts from the end."""
    if not 1 <= length <= MAX_READ_CHARS:
        raise InvalidArgumentError("length", f"must be between 1 and {MAX_READ_CHARS} characters (got {length})")
    if not -split_chars <= offset <= split_chars:
        raise InvalidArgumentError("offset", f"must be between {-split_chars} and {split_chars}, the split's "
                                             f"length (got {offset})")
    start = offset + split_chars if offset < 0 else offset
    return start, min(length, split_chars - start)


async def read_corpus(record: CorpusRecord, split: str, offset: int, length: int) -> CorpusText:
    """The exact stored characters of the range (validated first: INVALID_ARGUMENT names split/offset/length)."""
    first, split_chars = split_range(record, split)
    start, count = resolve_range(offset, length, split_chars)
    text = await asyncio.to_thread(read_chars, record.path, first + start, count)
    return CorpusText(split=split, offset=start, split_chars=split_chars, text=text)
