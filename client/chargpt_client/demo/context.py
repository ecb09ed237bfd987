"""The demo's options, what it has learned so far (for the report), and how it prints."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from chargpt_client import types as t
from chargpt_client.next_char import NextCharStep
from chargpt_client.sync import Client

BUILTIN_CORPORA = ("shakespeare", "python", "startups")


class DemoFailed(Exception):
    """A step could not go on (e.g. training failed); the CLI prints the reason and exits with status 1."""
STEP_COUNT = 8


@dataclass(frozen=True)
class CorpusProfile:
    """What the demo asks of a model trained on a corpus: a prompt to continue and a text to look at."""

    prompt: str
    attention_text: str


PROFILES: dict[str, CorpusProfile] = {
    "shakespeare": CorpusProfile("ROMEO:\n", "JULIET:\nO Romeo, Romeo! wherefore art thou"),
    "python": CorpusProfile("def ", "def add(a, b):\n    return a + b\n"),
    "startups": CorpusProfile("Meet ", "Meet Larkdapple: a text service for cats."),
}


@dataclass(frozen=True)
class DemoOptions:
    corpus: str = "shakespeare"
    text_file: Path | None = None
    prompt: str | None = None
    steps: int | None = None
    minutes: float | None = None
    fast: bool = False
    seed: int = 1337
    data_dir: Path = Path("chargpt-data")
    report_dir: Path = Path("chargpt-report")
    device: str = "auto"
    trainer_address: str | None = None
    inference_address: str | None = None
    sample_chars: int = 400
    heldout_chars: int = 3000

    @property
    def corpus_label(self) -> str:
        return self.text_file.stem if self.text_file else self.corpus


@dataclass
class DemoFindings:
    """Everything the report shows, filled in step by step."""

    device: t.DeviceReport | None = None
    corpus: t.Corpus | None = None
    roundtrip: tuple[str, list[int], str] | None = None
    job: t.TrainingJob | None = None
    events: list[t.JobEvent] = field(default_factory=list)
    training_seconds: float = 0.0
    stopped_early: bool = False
    model: t.Model | None = None
    generations: dict[str, t.GenerationResult] = field(default_factory=dict)
    prompt: str = ""
    continuation: t.GenerationResult | None = None
    next_char: list[NextCharStep] = field(default_factory=list)
    perplexity: list[dict[str, object]] = field(default_factory=list)
    filter_notes: list[str] = field(default_factory=list)
    images: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def samples(self) -> list[t.Sample]:
        return [e for e in self.events if isinstance(e, t.Sample)]

    @property
    def evaluations(self) -> list[t.Evaluation]:
        return [e for e in self.events if isinstance(e, t.Evaluation)]


@dataclass
class Demo:
    options: DemoOptions
    client: Client
    findings: DemoFindings = field(default_factory=DemoFindings)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    own_text: str | None = None  # the --text-file contents

    def step(self, number: int, title: str) -> None:
        heading = f"[{number}/{STEP_COUNT}] {title}"
        self.say("")
        self.say(heading)
        self.say("=" * len(heading))

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def block(self, text: str, indent: str = "    | ") -> None:
        for line in text.splitlines() or [""]:
            self.say(indent + line)

    def wrap(self, text: str) -> None:
        for line in textwrap.wrap(text, 100):
            self.say(line)

    @property
    def profile(self) -> CorpusProfile:
        if self.own_text is not None:
            tail = self.own_text[-self.options.heldout_chars:]
            start = tail.find("\n") + 1
            return CorpusProfile(tail[start:start + 12], tail[start:start + 40])
        return PROFILES[self.options.corpus]
