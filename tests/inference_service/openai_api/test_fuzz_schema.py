"""Property-based fuzzing of the OpenAI HTTP schema against a real in-process server: random JSON bodies, fields,
types and values (NaN, huge numbers, lone surrogates, unicode digits). Whatever arrives, the answer is a 200 or a
clear client-side error in OpenAI's shape (a 400 names its parameter), never a 500, and the server stays up."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.client.conftest import ServerThread, inference_factory
from tests.inference_service.conftest import VOCAB, write_checkpoint
from tests.support.protofuzz import ANY_TEXT

pytestmark = pytest.mark.slow
CLEAR = {200, 400, 404, 429}  # 404: an unknown model; 429: the queue is full
SEEN: Counter[int] = Counter()
FUZZ = settings(max_examples=int(os.environ.get("CHARGPT_FUZZ_EXAMPLES", "30")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

VALID = {"model": "tiny", "prompt": "a", "max_tokens": 2}
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 70), st.integers(), st.floats(),
                    st.text(max_size=12), st.sampled_from(["²", "\ud800", "1" * 5000, "٣", "NaN", ""]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                                         inner, max_size=3),
                    max_leaves=6)
VOCAB_TEXT = st.text(st.sampled_from(VOCAB), max_size=40)
TRICKY_KEYS = st.sampled_from(["²", "٣", "1" * 5000, " 1", "0x1", "+1", "1.0"])  # unicode digits, int()'s limits
TOKEN_KEYS = st.one_of(TRICKY_KEYS, TRICKY_KEYS, st.integers(-1, len(VOCAB) + 1).map(str), st.text(max_size=4))


def _fields() -> dict[str, st.SearchStrategy[Any]]:
    """Targeted values per OpenAI and chargpt field, each mixed with any JSON so that both kinds are explored."""
    targeted: dict[str, st.SearchStrategy[Any]] = {
        "model": st.sampled_from(["tiny", "tiny", "nope", ""]),
        "prompt": st.one_of(VOCAB_TEXT, st.lists(VOCAB_TEXT, max_size=3), ANY_TEXT, st.lists(st.integers(0, 9))),
        "max_tokens": st.integers(-1, 40), "n": st.integers(-1, 3), "best_of": st.integers(-1, 3),
        "logprobs": st.integers(-1, 22), "temperature": st.floats(-1, 3), "top_p": st.floats(-0.5, 1.5),
        "top_k": st.integers(-1, 80), "min_p": st.floats(-0.5, 1.5), "seed": st.integers(-1, 2**64),
        "presence_penalty": st.floats(-3, 3), "frequency_penalty": st.floats(-3, 3),
        "repetition_penalty": st.floats(-1, 3), "preset": st.sampled_from(["focused", "BALANCED", "wild", ""]),
        "stop": st.one_of(VOCAB_TEXT, st.lists(VOCAB_TEXT, max_size=4), st.lists(ANY_TEXT, max_size=20)),
        "logit_bias": st.dictionaries(TOKEN_KEYS, st.floats(-120, 120), min_size=1, max_size=3),
        "echo": st.booleans(), "stream": st.booleans(), "suffix": st.sampled_from(["", "end"]),
        "user": st.text(max_size=8),
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans(),
                                                              "continuous_usage_stats": st.booleans()}),
    }
    return {name: st.one_of(value, value, value, JSON) for name, value in targeted.items()}


FIELDS = _fields()


@st.composite
def bodies(draw: st.DrawFn) -> Any:
    """Mostly objects with a random subset of the fields (plus, sometimes, unknown ones); else any JSON."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    names = draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True, max_size=8))
    body = {name: draw(FIELDS[name]) for name in ["model", *names]}
    if draw(st.integers(0, 4)) == 0:
        body.update(draw(st.dictionaries(st.text(max_size=6), JSON, max_size=2)))
    return body


def _post(http: httpx.Client, path: str, body: Any) -> httpx.Response:
    """`body` as JSON with NaN and infinities (Python's json reads them) and lone surrogates (escaped)."""
    return http.post(path, content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})


def _check_stream(reply: httpx.Response) -> None:
    """A 200 stream: JSON events then [DONE]; an in-band error is a client-side one, never a server_error."""
    events = [line.removeprefix("data: ") for line in reply.text.split("\n\n") if line]
    assert events and events[-1] == "[DONE]", reply.text[-500:]
    for event in map(json.loads, events[:-1]):
        assert "error" not in event or event["error"]["type"] != "server_error", event


def _check(body: Any, reply: httpx.Response) -> None:
    assert reply.status_code in CLEAR, (reply.status_code, reply.text[:1000])
    SEEN[reply.status_code] += 1
    if reply.status_code == 200:
        if reply.headers["content-type"].startswith("text/event-stream"):
            _check_stream(reply)
        return
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if reply.status_code == 400 and isinstance(body, dict):
        assert isinstance(error["param"], str), error  # "" too: an unknown field may be named ""


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_each_fuzzed_field_gets_clear_answers(http: httpx.Client, name: str) -> None:
    """A valid request with this field fuzzed (and sometimes a second one): each field's own handling is reached."""
    @FUZZ
    @given(value=FIELDS[name], other=st.one_of(st.none(), st.sampled_from(sorted(FIELDS))), data=st.data())
    def run(value: Any, other: str | None, data: st.DataObject) -> None:
        body = {**VALID, name: value}
        if other is not None:
            body[other] = data.draw(FIELDS[other])
        _check(body, _post(http, "/v1/completions", body))
        assert http.get("/health").status_code == 200

    run()


@FUZZ
@given(body=bodies())
def test_fuzzed_completion_bodies_get_clear_answers(http: httpx.Client, body: Any) -> None:
    _check(body, _post(http, "/v1/completions", body))
    assert http.get("/health").status_code == 200


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     st.just(b'{"model": "tiny", "prompt": "a"'), st.just(b'{"model": "tiny", "max_tokens": 1e999}')))
def test_fuzzed_raw_bytes_get_clear_answers(http: httpx.Client, raw: bytes) -> None:
    for path in ("/v1/completions", "/v1/score"):
        reply = http.post(path, content=raw, headers={"content-type": "application/json"})
        _check(None, reply)
    assert http.get("/health").status_code == 200


def test_after_fuzzing_the_model_still_serves(http: httpx.Client) -> None:
    print(dict(SEEN))
    reply = http.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 5})
    assert reply.status_code == 200 and len(reply.json()["choices"][0]["text"]) == 5


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root: Path = tmp_path_factory.mktemp("fuzz-http")
    write_checkpoint(root / "tiny")
    threads = ServerThread()
    try:
        server, _ = threads.start(inference_factory(root, http_port=0, max_new_tokens_limit=64, preload="tiny=tiny"))
        with httpx.Client(base_url=f"http://127.0.0.1:{server.http.port}", timeout=60) as client:
            yield client
    finally:
        threads.close()
