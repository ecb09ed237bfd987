"""Corpus uploads and lookups: validation with exact codes and offsets, limits, dedup, deletion, built-ins."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from trainer_harness import Trainer, sample_text

from chargpt.v1 import trainer_pb2 as S
from trainer_service.corpora.library import MIN_CORPUS_CHARS


async def upload_error(trainer: Trainer, data: bytes | str, **kwargs: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trainer.upload(data, **kwargs)  # type: ignore[arg-type]
    return info.value


def stored_files(trainer: Trainer) -> list[Path]:
    return sorted((trainer.data_dir / "corpora").iterdir())


async def test_invalid_utf8_reports_the_byte_offset(trainer: Trainer) -> None:
    text = sample_text(3000)
    good, prefix = text.encode(), text[:2400].encode()  # a character boundary, 2400+ bytes in
    bad = prefix + b"\xff" + good[len(prefix):]
    err = await upload_error(trainer, bad, chunk=700)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and f"offset {len(prefix)} " in err.details()
    # A multi-byte character cut short at the very end: the offset is where it starts.
    truncated = good + "日".encode()[:2]
    err = await upload_error(trainer, truncated, chunk=1001)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and f"offset {len(good)}" in err.details()
    # An invalid continuation right after a chunk boundary that split a 3-byte character.
    broken = b"x" * 999 + "日".encode()[:1] + b"A" + good
    err = await upload_error(trainer, broken, chunk=1000)
    assert "offset 999 " in err.details()
    assert stored_files(trainer) == []


async def test_empty_and_too_small_corpora_are_rejected(trainer: Trainer) -> None:
    err = await upload_error(trainer, b"")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in err.details()
    err = await upload_error(trainer, "x" * (MIN_CORPUS_CHARS - 1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "too small" in err.details() and str(MIN_CORPUS_CHARS) in err.details()
    ok = await trainer.upload("é" * MIN_CORPUS_CHARS)  # counted in characters, not bytes
    assert ok.corpus.num_chars == MIN_CORPUS_CHARS and ok.corpus.size_bytes == 2 * MIN_CORPUS_CHARS


@pytest.mark.parametrize(("name", "description", "field"), [
    ("", "", "header.name"), ("x" * 129, "", "header.name"), ("bad/name", "", "header.name"),
    ("ok", "d" * 1025, "header.description")])
async def test_header_validation_names_the_field(trainer: Trainer, name: str, description: str,
                                                 field: str) -> None:
    err = await upload_error(trainer, sample_text(1200), name=name, description=description)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.details()


async def test_header_must_come_first_and_only_once(trainer: Trainer) -> None:
    async def data_first() -> object:
        yield S.UploadCorpusRequest(data=b"abc")

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trainer.stub.UploadCorpus(data_first())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "header" in info.value.details()

    async def two_headers() -> object:
        yield S.UploadCorpusRequest(header=S.CorpusHeader(name="a"))
        yield S.UploadCorpusRequest(header=S.CorpusHeader(name="b"))

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trainer.stub.UploadCorpus(two_headers())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_oversize_upload_is_resource_exhausted_and_nothing_is_stored(tmp_path: Path,
                                                                           fake_engine_env: object) -> None:
    trainer = Trainer(tmp_path / "data", max_upload_bytes=5000)
    await trainer.start()
    try:
        err = await upload_error(trainer, sample_text(8000), chunk=1000)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "5000" in err.details()
        assert stored_files(trainer) == []
        assert (await trainer.stub.ListCorpora(S.ListCorporaRequest())).corpora == []
        fits = await trainer.upload("a" * 5000)
        assert fits.created
    finally:
        await trainer.stop()


async def test_get_list_delete(trainer: Trainer) -> None:
    corpus = (await trainer.upload(sample_text(2000), name="mine")).corpus
    got = (await trainer.stub.GetCorpus(S.GetCorpusRequest(corpus_id=corpus.corpus_id))).corpus
    assert got == corpus
    listed = (await trainer.stub.ListCorpora(S.ListCorporaRequest())).corpora
    assert [c.corpus_id for c in listed] == [corpus.corpus_id]
    for bad in ("", "missing"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await trainer.stub.GetCorpus(S.GetCorpusRequest(corpus_id=bad))
        assert info.value.code() == (grpc.StatusCode.INVALID_ARGUMENT if not bad else grpc.StatusCode.NOT_FOUND)

    job = await trainer.create_job(corpus.corpus_id, max_steps=10_000)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trainer.stub.DeleteCorpus(S.DeleteCorpusRequest(corpus_id=corpus.corpus_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "job" in info.value.details()
    await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=job.job_id))
    await trainer.stub.DeleteCorpus(S.DeleteCorpusRequest(corpus_id=corpus.corpus_id))
    assert stored_files(trainer) == []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trainer.stub.DeleteCorpus(S.DeleteCorpusRequest(corpus_id=corpus.corpus_id))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:  # its corpus is gone, so the job cannot continue
        await trainer.stub.ResumeTrainingJob(S.ResumeTrainingJobRequest(job_id=job.job_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_builtin_corpora_are_listed_and_protected(tmp_path: Path, fake_engine_env: object) -> None:
    trainer = Trainer(tmp_path / "data", builtin_corpora=True)
    await trainer.start()
    try:
        listed = (await trainer.stub.ListCorpora(S.ListCorporaRequest())).corpora
        builtins = {c.name: c for c in listed if c.builtin}
        assert set(builtins) == {"shakespeare", "python", "startups"}
        for corpus in builtins.values():
            assert corpus.num_chars > 100_000 and len(corpus.corpus_id) == 64 and corpus.description
            assert (trainer.data_dir / "corpora" / f"{corpus.corpus_id}.txt").stat().st_size == corpus.size_bytes
        by_name = (await trainer.stub.GetCorpus(S.GetCorpusRequest(corpus_id="shakespeare"))).corpus
        assert by_name == builtins["shakespeare"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await trainer.stub.DeleteCorpus(S.DeleteCorpusRequest(corpus_id="python"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "built in" in info.value.details()
        job = await trainer.create_job("startups", max_steps=1, block_size=8)
        assert job.corpus_id == builtins["startups"].corpus_id
        await trainer.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED])
    finally:
        await trainer.stop()
