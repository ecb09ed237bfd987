"""A completion cut short by the server's shutdown (SIGTERM, the drain's grace period ending) must not look
complete over HTTP: a stream ends with an error event (the openai SDK raises on it), a plain request is a 503."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx
import openai
import pytest

from tests.inference_service.conftest import write_checkpoint
from tests.support.procs import free_port, start_service, stop, wait_serving

BODY = {"model": "tiny", "prompt": "a", "max_tokens": 4000, "seed": 1}


async def _until_loaded(http: httpx.AsyncClient) -> None:
    """--preload loads after the server reports SERVING."""
    for _ in range(300):
        if (await http.get("/v1/models")).json()["data"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the preloaded model did not become ready")


@pytest.mark.slow
async def test_sigterm_ends_streams_with_an_error_not_a_silent_done(tmp_path: Path) -> None:
    models, log, port, http_port = tmp_path / "models", tmp_path / "server.log", free_port(), free_port()
    write_checkpoint(models / "tiny")
    args = ["--port", str(port), "--http-port", str(http_port), "--models-dir", str(models), "--preload",
            "tiny=tiny", "--device", "cpu", "--torch-threads", "1", "--shutdown-grace-seconds", "1"]
    server = start_service("inference_service.server", args, log)
    base = f"http://127.0.0.1:{http_port}"
    try:
        await wait_serving(port)
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            await _until_loaded(http)
            plain = asyncio.ensure_future(http.post("/v1/completions", json=BODY))
            sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
            stream = await sdk.completions.create(**BODY, stream=True)  # type: ignore[call-overload]
            async with http.stream("POST", "/v1/completions", json={**BODY, "stream": True}) as raw:
                lines = raw.aiter_lines()
                first = await anext(lines)
                server.send_signal(signal.SIGTERM)
                events = [first, *[line async for line in lines]]
            with pytest.raises(openai.APIError, match="shutting down"):
                async for _chunk in stream:
                    pass
            reply = await plain
        data = [json.loads(e.removeprefix("data: ")) for e in events if e.startswith("data: {")]
        assert all(c["finish_reason"] is None for d in data[:-1] for c in d["choices"])  # cut short: no ending
        assert data[-1]["error"]["type"] == "service_unavailable_error" and "incomplete" in data[-1]["error"]["message"]
        assert reply.status_code == 503 and "shutting down" in reply.json()["error"]["message"]
        assert server.wait(30) == 0
    finally:
        stop(server)
        print(log.read_text(errors="replace")[-2000:])
