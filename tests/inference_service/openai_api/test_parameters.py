"""Each OpenAI completions parameter's zero, null and absent meaning, checked against the reference's: honoured
the same way, or refused with a 400 naming it (never silently ignored)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import httpx
import pytest

from tests.inference_service.conftest import Served
from tests.inference_service.openai_api.conftest import async_client, base_url, post, sync_client

ARGS: dict[str, Any] = {"model": "tiny", "prompt": "the cat ", "max_tokens": 12, "seed": 7, "temperature": 0.9}


async def test_logprobs_zero_gives_the_sampled_characters_logprob_alone(web: Served) -> None:
    def run() -> Any:
        return sync_client(web).completions.create(**ARGS, logprobs=0)

    zero = (await asyncio.to_thread(run)).choices[0]
    one = (await async_client(web).completions.create(**ARGS, logprobs=1)).choices[0]
    assert zero.text == one.text and zero.logprobs is not None and one.logprobs is not None
    assert zero.logprobs.tokens == list(zero.text) and zero.logprobs.text_offset == list(range(12))
    lps = zero.logprobs.token_logprobs or []
    assert lps == one.logprobs.token_logprobs and all(math.isfinite(v) and v <= 0 for v in lps)
    assert zero.logprobs.top_logprobs == [{t: v} for t, v in zip(zero.text, lps, strict=True)]  # no alternatives


async def test_logprobs_zero_streamed(web: Served) -> None:
    stream = await async_client(web).completions.create(**ARGS, logprobs=0, stream=True)
    chunks = [chunk async for chunk in stream]
    tokens = [t for c in chunks for t in (c.choices[0].logprobs.tokens or [])]  # type: ignore[union-attr]
    tops = [top for c in chunks for top in (c.choices[0].logprobs.top_logprobs or [])]  # type: ignore[union-attr]
    assert "".join(tokens) == "".join(c.choices[0].text for c in chunks) and len(tokens) == 12
    assert [list(top) for top in tops] == [[t] for t in tokens]


@pytest.mark.parametrize("extra", [{}, {"logprobs": None}])
async def test_logprobs_null_or_absent_is_none(web: Served, extra: dict[str, Any]) -> None:
    reply = await post(web, "/v1/completions", {**ARGS, **extra})
    assert reply.status_code == 200 and reply.json()["choices"][0]["logprobs"] is None


async def test_null_means_absent(web: Served) -> None:
    """max_tokens null is the default 16 (not the gRPC default), n/best_of/stop/suffix/user/echo/stream/prompt null
    are their defaults: the same completion as without them."""
    plain = (await post(web, "/v1/completions", {"model": "tiny", "prompt": "", "seed": 3})).json()
    nulls = {"max_tokens": None, "n": None, "best_of": None, "stop": None, "suffix": None, "user": None,
             "echo": None, "stream": None, "stream_options": None, "temperature": None, "top_p": None,
             "presence_penalty": None, "frequency_penalty": None, "logit_bias": None, "prompt": None}
    reply = await post(web, "/v1/completions", {"model": "tiny", "seed": 3, **nulls})
    assert reply.status_code == 200, reply.text
    assert [c["text"] for c in reply.json()["choices"]] == [c["text"] for c in plain["choices"]]
    assert len(plain["choices"]) == 1 and len(plain["choices"][0]["text"]) == 16


async def test_best_of_equal_to_n_suffix_empty_and_user_are_accepted(web: Served) -> None:
    base = (await post(web, "/v1/completions", {**ARGS, "n": 2})).json()
    for extra in ({"best_of": 2}, {"suffix": ""}, {"user": "alice"}):
        reply = await post(web, "/v1/completions", {**ARGS, "n": 2, **extra})
        assert [c["text"] for c in reply.json()["choices"]] == [c["text"] for c in base["choices"]], extra
    one = await async_client(web).completions.create(**ARGS, best_of=1)
    assert one.choices[0].text == base["choices"][0]["text"]


async def test_stop_as_a_string_or_a_list(web: Served) -> None:
    text = (await post(web, "/v1/completions", ARGS)).json()["choices"][0]["text"]
    cut = text[3:5]
    as_string = (await post(web, "/v1/completions", {**ARGS, "stop": cut})).json()["choices"][0]
    as_list = (await post(web, "/v1/completions", {**ARGS, "stop": [cut, "QQQ"]})).json()["choices"][0]
    assert as_string == as_list and as_string["finish_reason"] == "stop"
    assert as_string["text"] == text[:text.index(cut)]
    empty = (await post(web, "/v1/completions", {**ARGS, "stop": []})).json()["choices"][0]
    assert empty["text"] == text and empty["finish_reason"] == "length"


@pytest.mark.parametrize(("body", "param"), [
    ({"best_of": 3, "n": 2}, "best_of"), ({"best_of": 1, "n": 2}, "best_of"), ({"best_of": 0}, "best_of"),
    ({"suffix": "the end"}, "suffix"), ({"echo": True, "logprobs": 0}, "echo"), ({"echo": True, "logprobs": 2}, "echo"),
    ({"logprobs": -1}, "logprobs"), ({"max_tokens": 0}, "max_tokens"), ({"n": 0}, "n"), ({"stop": ""}, "stop"),
    ({"stop": [""]}, "stop"), ({"user": 5}, "user"), ({"prompt": []}, "prompt"), ({"stream": [True]}, "stream"),
    ({"logit_bias": {"²": 5}}, "logit_bias"), ({"logit_bias": {"1" * 5000: 5}}, "logit_bias"),
    ({"logit_bias": {"-1": 5}}, "logit_bias"), ({"top_p": 1e-60}, "top_p"),
    ({"repetition_penalty": 1e-100}, "repetition_penalty"),
    ({"": 1}, ""), ({"stream_options": {"include_usage": True}}, "stream_options")])
async def test_unsupported_or_bad_values_are_400_naming_them(web: Served, body: dict[str, Any], param: str) -> None:
    reply = await post(web, "/v1/completions", {**ARGS, **body})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"model": "tiny", "prompt": "a", "\\ud800": 1}', None), (b'{"model": "tiny", "prompt": "\\ud800"}', "prompt"),
    (b'{"model": "tiny", "temperature": NaN}', "temperature"),
    (b'{"model": "tiny", "max_tokens": 1e999}', "max_tokens"), (b'{"model": "tiny", "prompt": "a",', None),
    (b"[1, 2]", None), (b"", None)])
async def test_malformed_json_is_400(web: Served, raw: bytes, param: str | None) -> None:
    """JSON that is not UTF-8-encodable (a lone surrogate), NaN, overflowing numbers, or not JSON at all."""
    async with httpx.AsyncClient(base_url=base_url(web), timeout=30) as client:
        reply = await client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
