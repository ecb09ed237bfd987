"""Versioning: one semantic version everywhere; 0.1's create_job keywords kept, deprecated (issue 23.9)."""

from __future__ import annotations

import re
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path

import chargpt_client
import pytest
from chargpt_client import AsyncTrainerClient, ModelConfig, TrainerClient, TrainingJob, TrainingOptions

import chargpt
from tests.client.conftest import FAST_RETRY, ServerThread, trainer_factory

ROOT = Path(__file__).resolve().parents[2]
TINY = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)
CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 60
KEYWORDS_WARNING = (r"create_job\(max_steps=\.\.\., learning_rate=\.\.\.\) is deprecated since chargpt 0\.2\.0 and "
                    r"will be removed in 0\.3\.0; use create_job\(\.\.\., training=TrainingOptions\(max_steps=100000, "
                    r"learning_rate=0\.002\)\)")


def test_one_semantic_version_in_the_package_the_library_and_the_changelog() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    assert chargpt.__version__ == chargpt_client.__version__ == version
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{version}]" in changelog
    assert "## Versioning" in (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def trainer(server_thread: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A trainer's address and a corpus on it."""
    server, address = server_thread.start(trainer_factory(tmp_path_factory.mktemp("trainer"), builtin_corpora=False))
    with TrainerClient(address, FAST_RETRY) as client:
        yield address, client.upload_corpus("citizens", CORPUS).corpus.corpus_id
    server_thread.stop(server)


def _keyword_job(job: TrainingJob, client: TrainerClient) -> None:
    """The keywords reached the trainer as TrainingOptions would have; the job is cancelled (it was only a probe)."""
    assert job.max_steps == 100_000 and job.training["learning_rate"] == pytest.approx(0.002)
    client.cancel_job(job.job_id)


def test_the_keyword_form_of_create_job_still_works_with_a_deprecation_warning(trainer: tuple[str, str]) -> None:
    address, corpus_id = trainer
    with TrainerClient(address, FAST_RETRY) as client:
        with pytest.warns(DeprecationWarning, match=KEYWORDS_WARNING) as caught:
            job = client.create_job(corpus_id, model=TINY, max_steps=100_000, learning_rate=0.002)
        assert caught[0].filename == __file__  # attributed to the caller's line, where the fix is needed
        _keyword_job(job, client)
        with pytest.warns(DeprecationWarning, match=r"num_processes=0\) is deprecated .* removed in 0\.3\.0"):
            job = client.create_job(corpus_id, model=TINY, num_processes=0, training=TrainingOptions(max_steps=1))
        assert job.num_processes == 1
        client.cancel_job(job.job_id)
        with pytest.raises(TypeError, match="unexpected keyword argument 'max_step'"):
            client.create_job(corpus_id, max_step=5)
        with pytest.raises(ValueError, match="unknown training field"):  # what 0.1 raised
            client.create_job(corpus_id, max_step=5)
        with pytest.warns(DeprecationWarning):  # 0.1 took enum values in any case
            job = client.create_job(corpus_id, model=TINY, max_steps=1, precision="FP32", lr_schedule="Cosine")
        assert (job.training["precision"], job.training["lr_schedule"]) == ("FP32", "COSINE")
        client.cancel_job(job.job_id)
        with pytest.raises(TypeError, match="not both"):
            client.create_job(corpus_id, training=TrainingOptions(seed=1), max_steps=5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the current form warns about nothing
            client.cancel_job(client.create_job(corpus_id, model=TINY, training=TrainingOptions(max_steps=1)).job_id)


async def test_the_asyncio_client_keeps_the_keyword_form_too(trainer: tuple[str, str]) -> None:
    address, corpus_id = trainer
    async with AsyncTrainerClient(address, FAST_RETRY) as client:
        with pytest.warns(DeprecationWarning, match=KEYWORDS_WARNING) as caught:
            job = await client.create_job(corpus_id, model=TINY, max_steps=100_000, learning_rate=0.002)
        assert caught[0].filename == __file__
    with TrainerClient(address, FAST_RETRY) as sync_client:
        _keyword_job(job, sync_client)
