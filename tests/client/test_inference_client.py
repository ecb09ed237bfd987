"""InferenceClient and AsyncInferenceClient against a real in-process inference server with tiny models."""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import pytest
from chargpt_client import (
    AlreadyExists,
    AsyncClient,
    AsyncInferenceClient,
    ChargptClientError,
    InferenceClient,
    InvalidArgument,
    NotFound,
)

from tests.client.conftest import FAST_RETRY, InferenceFixture


@pytest.fixture(scope="module")
def client(inference: InferenceFixture) -> Iterator[InferenceClient]:
    with InferenceClient(inference.address, FAST_RETRY) as c:
        c.load_model("tiny", checkpoint_path="tiny")
        yield c


def test_load_is_idempotent_and_models_are_typed(client: InferenceClient) -> None:
    again = client.load_model("tiny", checkpoint_path="tiny")
    assert not again.loaded and again.model.state == "READY"
    model = client.get_model("tiny")
    assert model.config.n_layer == 2 and model.config.block_size == 32
    assert model.parameter_count > 0 and model.vocabulary == "".join(sorted(model.vocabulary))
    assert model.training.corpus_name == "test" and model.training.step == 7
    assert model.loaded_time is not None and len(model.weights_sha256) == 64
    assert "tiny" in [m.name for m in client.list_models()]


def test_errors_are_typed_with_code_and_message(client: InferenceClient) -> None:
    with pytest.raises(NotFound) as missing:
        client.get_model("nope")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND and "nope" in missing.value.message
    assert str(missing.value).startswith("NOT_FOUND: ")
    with pytest.raises(AlreadyExists):
        client.load_model("tiny", checkpoint_path="other")
    with pytest.raises(InvalidArgument) as bad_chars:
        client.score("tiny", "héllo wörld")
    assert isinstance(bad_chars.value, ChargptClientError) and isinstance(bad_chars.value, ValueError)
    with pytest.raises(ValueError, match="preset"):
        client.generate("tiny", "a", preset="wild")


def test_generate_is_seeded_and_summarised(client: InferenceClient) -> None:
    first = client.generate("tiny", "to be", preset="balanced", max_new_tokens=20, seed=7)
    second = client.generate("tiny", "to be", preset="balanced", max_new_tokens=20, seed=7)
    assert first.text == second.text and len(first.text) == 20
    s = first.summary
    assert s.finish_reason == "LENGTH" and s.seed == 7 and s.generated_tokens == 20 and s.prompt_tokens == 5
    assert (s.temperature, s.top_k) == (pytest.approx(0.8), 40)
    focused = client.generate("tiny", "to be", preset="focused", max_new_tokens=5, seed=7, top_k=3)
    assert focused.summary.top_k == 3 and focused.summary.temperature == pytest.approx(0.3)


def test_explicit_zeros_and_tiny_temperatures(client: InferenceClient) -> None:
    """0 characters and stride 0 are refused by name; 1e-38 is greedy and echoed as 1e-38, not 0."""
    with pytest.raises(InvalidArgument, match="max_new_tokens"):
        client.generate("tiny", "a", max_new_tokens=0)
    with pytest.raises(InvalidArgument, match="stride"):
        client.score("tiny", "abc abc", stride=0)
    assert len(client.generate("tiny", "a", temperature=0.0).text) == 256  # unset: the server's default
    greedy = client.generate("tiny", "to be", max_new_tokens=20, temperature=0.0)
    tiny = client.generate("tiny", "to be", max_new_tokens=20, temperature=1e-38, seed=1)
    assert tiny.text == greedy.text and tiny.summary.temperature == 1e-38


def test_generate_stream_yields_chunks_matching_generate(client: InferenceClient) -> None:
    whole = client.generate("tiny", "a", max_new_tokens=30, seed=3, temperature=1.0)
    stream = client.generate_stream("tiny", "a", max_new_tokens=30, seed=3, temperature=1.0)
    chunks = list(stream)
    assert chunks and all(isinstance(c, str) for c in chunks)
    assert "".join(chunks) == stream.text == whole.text
    assert stream.summary is not None and stream.summary.generated_tokens == 30


def test_a_stream_can_be_cancelled(client: InferenceClient) -> None:
    """Leaving the `with` block cancels the RPC: nothing more arrives, what did arrive is kept, no summary."""
    with client.generate_stream("tiny", "a", max_new_tokens=4000, seed=1, temperature=1.0) as stream:
        first = next(iter(stream))
    assert first and stream.text == first and stream.summary is None
    assert list(stream) == [] and stream.text == first
    stream.cancel()  # a second cancel does nothing
    finished = client.generate_stream("tiny", "a", max_new_tokens=5, seed=1)
    assert len(finished.result().text) == 5
    finished.cancel()  # after the end: nothing to stop
    assert finished.summary is not None and finished.summary.finish_reason == "LENGTH"


def test_logprobs_controls_and_samples(client: InferenceClient) -> None:
    whole = client.generate("tiny", "a", max_new_tokens=15, seed=3, logprobs=3, n=2, repetition_penalty=1.2,
                            frequency_penalty=0.5, presence_penalty=0.1, min_p=0.01, logit_bias={"a": -1.0})
    assert [c.index for c in whole.choices] == [0, 1] and whole.choices[0].text == whole.text
    assert "".join(e.token for e in whole.logprobs) == whole.text
    assert all(len(e.top) == 3 and e.top[0][1] >= e.logprob for e in whole.logprobs)
    stream = client.generate_stream("tiny", "a", max_new_tokens=15, seed=3, logprobs=3, n=2,
                                    repetition_penalty=1.2, frequency_penalty=0.5, presence_penalty=0.1,
                                    min_p=0.01, logit_bias={"a": -1.0})
    assert "".join(stream) == whole.text and stream.result().logprobs == whole.logprobs


def test_stop_sequences(client: InferenceClient) -> None:
    text = client.generate("tiny", "", max_new_tokens=200, seed=1, temperature=0.0).text
    stop = text[10:12]
    stopped = client.generate("tiny", "", max_new_tokens=200, seed=1, temperature=0.0, stop=[stop])
    assert stopped.summary.finish_reason == "STOP" and stopped.summary.stop_sequence == stop
    assert stop not in stopped.text and text.startswith(stopped.text)


def test_score_matches_its_token_logprobs(client: InferenceClient) -> None:
    result = client.score("tiny", "the cat sat on the mat", include_token_logprobs=True)
    assert result.num_tokens == 21 == len(result.token_logprobs)
    mean_nll = -sum(result.token_logprobs) / result.num_tokens
    assert result.mean_nll == pytest.approx(mean_nll, rel=1e-4)
    assert result.perplexity == pytest.approx(math.exp(result.mean_nll), rel=1e-6)
    assert result.bits_per_char == pytest.approx(result.mean_nll / math.log(2), rel=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_attention_weights_without_numpy(client: InferenceClient, dtype: str) -> None:
    att = client.attention("tiny", "hello", dtype=dtype)
    assert att.tokens == list("hello") and att.layers == [0, 1] and att.heads == [0, 1]
    assert att.shape == (2, 2, 5, 5) and att.dtype == dtype
    nested = att.to_lists()
    for layer in nested:
        for head in layer:
            for i, row in enumerate(head):
                assert sum(row) == pytest.approx(1.0, abs=1e-2)
                assert all(w == 0 for w in row[i + 1:])  # causal
    assert len(memoryview(att.values())) == 100
    numpy = pytest.importorskip("numpy")
    assert numpy.allclose(att.to_numpy(), numpy.array(nested), atol=1e-6)
    one = client.attention("tiny", "hello", layers=[1], heads=[0])
    assert one.shape == (1, 1, 5, 5)
    flat = [w for row in one.matrix(0, 0) for w in row]
    assert flat == pytest.approx([w for row in nested[1][0] for w in row], abs=1e-3)


def test_unload(client: InferenceClient) -> None:
    client.load_model("temp", checkpoint_path="other")
    client.unload_model("temp")
    with pytest.raises(NotFound):
        client.unload_model("temp")


async def test_async_client_mirrors_the_sync_one(inference: InferenceFixture) -> None:
    async with AsyncClient(inference_address=inference.address, options=FAST_RETRY) as both:
        client = both.inference
        assert isinstance(client, AsyncInferenceClient)
        loaded = await client.load_model("tiny", checkpoint_path="tiny")
        assert loaded.model.name == "tiny"
        assert "tiny" in [m.name for m in await client.list_models()]
        whole = await client.generate("tiny", "a", max_new_tokens=12, seed=5, temperature=1.0)
        stream = client.generate_stream("tiny", "a", max_new_tokens=12, seed=5, temperature=1.0)
        assert "".join([chunk async for chunk in stream]) == whole.text
        assert (await stream.result()).summary.seed == 5
        async with client.generate_stream("tiny", "a", max_new_tokens=4000, seed=1) as long:
            first = await anext(aiter(long))
        assert first and long.text == first and long.summary is None
        assert [chunk async for chunk in long] == []
        score = await client.score("tiny", "abc abc")
        assert score.num_tokens == 6
        att = await client.attention("tiny", "abc")
        assert att.shape[2:] == (3, 3)
        with pytest.raises(NotFound):
            await client.get_model("nope")
        with pytest.raises(InvalidArgument, match="stride"):
            await client.score("tiny", "abc abc", stride=0)
        with pytest.raises(InvalidArgument, match="max_new_tokens"):
            await client.generate("tiny", "a", max_new_tokens=0)
