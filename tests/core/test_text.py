"""chargpt.text: exact UTF-8 reads, whole files and character ranges across block boundaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from chargpt.text import TextDecodeError, read_chars, read_text

TEXT = "\ufeffa\r\nb\rc\x00é€𝄞\n" * 50  # BOM, CRLF, CR, NUL and 1- to 4-byte characters


def test_read_text_keeps_every_character(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    assert read_text(path) == TEXT
    assert path.read_text(encoding="utf-8") != TEXT  # what text mode would have done


@pytest.mark.parametrize("block", [1, 2, 3, 5, 1 << 20])
def test_read_chars_matches_slicing_whatever_the_block_size(tmp_path: Path, block: int) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    for start, count in ((0, 10), (7, 33), (len(TEXT) - 5, 5), (len(TEXT) - 3, 100), (len(TEXT), 4), (3, 0)):
        assert read_chars(path, start, count, block_bytes=block) == TEXT[start:start + count]


def test_bad_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(TextDecodeError, match="not valid UTF-8: bad byte at offset 3"):
        read_text(path)
    with pytest.raises(TextDecodeError):
        read_chars(path, 0, 10)
