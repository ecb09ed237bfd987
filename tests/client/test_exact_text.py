"""Text exactly as uploaded: CRLF, CR, BOM and NUL corpora train models whose vocabulary is the corpus's."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chargpt_client import AsyncTrainerClient, Client, InvalidArgument, NotFound, TrainingOptions
from chargpt_client import types as t
from chargpt_client.transfer import CorpusSource

from .conftest import FAST_RETRY, ServerThread, inference_factory, trainer_factory

LINES = ["First Citizen: we are accounted poor citizens", "the patricians good", "what authority surfeits on",
         "would relieve us: if they would yield us but the superfluity", "while it were wholesome"]
TINY_MODEL = t.ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32)


def _text(newline: str, prefix: str = "", repeat: int = 8) -> str:
    return prefix + "".join(line + newline for line in LINES) * repeat


# name -> (text, how the client gets it); each source kind reads or passes the bytes unchanged.
CORPORA: dict[str, tuple[str, Callable[[str, Path], CorpusSource]]] = {
    "crlf": (_text("\r\n"), lambda text, tmp: _file(tmp / "crlf.txt", text)),  # a path, as saved on Windows
    "cr": (_text("\r"), lambda text, tmp: io.BytesIO(text.encode("utf-8"))),  # a binary file object
    "bom": (_text("\n", prefix="\ufeff"), lambda text, tmp: text.encode("utf-8")),  # bytes
    "nul": (_text("\x00\n"), lambda text, tmp: text),  # str
}


def _file(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


@dataclass
class Services:
    client: Client
    trainer_address: str
    workdir: Path


@pytest.fixture(scope="module")
def services(server_thread: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("exact")
    _, trainer = server_thread.start(trainer_factory(root / "trainer", builtin_corpora=False,
                                                     event_poll_seconds=0.05))
    (root / "models").mkdir()
    _, inference = server_thread.start(inference_factory(root / "models", trainer_address=trainer))
    with Client(trainer, inference, FAST_RETRY) as client:
        yield Services(client, trainer, root)


@pytest.mark.slow
def test_line_endings_bom_and_nul_survive_upload_training_and_scoring(services: Services) -> None:
    trainer, inference = services.client.trainer, services.client.inference
    uploaded: dict[str, t.Corpus] = {}
    for name, (text, source) in CORPORA.items():
        corpus = trainer.upload_corpus(name, source(text, services.workdir)).corpus
        assert corpus.num_chars == len(text) and corpus.vocabulary == "".join(sorted(set(text)))
        assert trainer.read_corpus(corpus.corpus_id, length=len(text)).text == text  # stored exactly
        uploaded[name] = corpus
    options = TrainingOptions(max_steps=3, eval_interval=0, sample_interval=0, batch_size=4, seed=3)
    jobs = {name: trainer.create_job(c.corpus_id, model=TINY_MODEL, device="cpu", training=options)
            for name, c in uploaded.items()}
    for name, job in jobs.items():
        states = [e.state for e in trainer.watch_job(job.job_id) if isinstance(e, t.StateChanged)]
        assert states[-1] == "SUCCEEDED", (name, trainer.get_job(job.job_id).error)
        assert job.model.vocab_size == len(uploaded[name].vocabulary)
        model = inference.load_model(f"exact-{name}", job_id=job.job_id).model
        assert model.vocabulary == uploaded[name].vocabulary, name  # the model saw exactly the corpus's characters
        held_out = trainer.read_corpus(job.corpus_id, "validation", 0, 120).text
        assert held_out == CORPORA[name][0][uploaded[name].train_chars:][:120]
        score = inference.score(model.name, held_out)  # would be refused if any character had been changed
        assert score.num_tokens == len(held_out) - 1 and score.perplexity > 1
    assert "\r\n" in trainer.read_corpus(uploaded["crlf"].corpus_id, "validation", -60, 60).text


def test_a_text_file_object_keeps_or_refuses_its_line_endings(services: Services) -> None:
    trainer = services.client.trainer
    text = _text("\r\n", repeat=6)
    path = _file(services.workdir / "notes.txt", text)
    with open(path, encoding="utf-8", newline="") as exact:
        assert trainer.upload_corpus("notes", exact).corpus.num_chars == len(text)
    before = len(trainer.list_corpora())
    with open(path, encoding="utf-8") as translating, pytest.raises(ValueError, match="newline=''"):
        trainer.upload_corpus("notes-translated", translating)
    assert len(trainer.list_corpora()) == before  # nothing half-stored


def test_read_corpus_ranges_and_errors(services: Services) -> None:
    trainer = services.client.trainer
    text = _text("\n", repeat=6)
    corpus = trainer.upload_corpus("ranges", text).corpus
    whole = trainer.read_corpus(corpus.corpus_id)
    assert (whole.text, whole.split, whole.offset, whole.split_chars) == (text, "all", 0, len(text))
    train = trainer.read_corpus(corpus.corpus_id, "train", 5, 10)
    assert train.text == text[5:15] and train.split_chars == corpus.train_chars
    val = trainer.read_corpus(corpus.corpus_id, "validation", -30, 1000)  # clipped at the split's end
    assert val.text == text[-30:] and val.offset == corpus.val_chars - 30
    end = trainer.read_corpus(corpus.corpus_id, "validation", corpus.val_chars, 5)
    assert end.text == "" and end.offset == corpus.val_chars
    for kwargs, field in ((dict(length=0), "length"), (dict(length=262_145), "length"),
                          (dict(offset=len(text) + 1), "offset"), (dict(offset=-len(text) - 1), "offset")):
        with pytest.raises(InvalidArgument, match=field):
            trainer.read_corpus(corpus.corpus_id, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="corpus_id"):
        trainer.read_corpus("")
    with pytest.raises(NotFound):
        trainer.read_corpus("0" * 64)
    with pytest.raises(ValueError, match="split"):
        trainer.read_corpus(corpus.corpus_id, "test")

    async def read_async() -> str:
        async with AsyncTrainerClient(services.trainer_address, FAST_RETRY) as client:
            return (await client.read_corpus(corpus.corpus_id, "validation", -10, 10)).text

    assert asyncio.run(read_async()) == text[-10:]
