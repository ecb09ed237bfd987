"""KV-cache sizing from memory: the batch rows a model gets, from the settings and the memory available."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from chargpt.core.config import ModelConfig
from chargpt.v1 import inference_pb2
from inference_service.kv_cache_sizing import AUTO_BATCH_CAP, available_memory, kv_row_bytes, size_cache

from .conftest import Served, ServerFactory, write_checkpoint

NOTEBOOK = ModelConfig(vocab_size=65)  # 6 layers, 384 wide, block 256
GIB = 1 << 30


def test_row_bytes_are_keys_and_values_of_every_layer() -> None:
    assert kv_row_bytes(NOTEBOOK, torch.float32) == 2 * 6 * 256 * 384 * 4  # 4.5 MiB
    assert kv_row_bytes(NOTEBOOK, torch.bfloat16) == kv_row_bytes(NOTEBOOK, torch.float32) // 2


def test_default_is_the_cap_when_memory_allows_and_the_budget_otherwise() -> None:
    roomy = size_cache(NOTEBOOK, torch.float32, None, None, 0.3, available=16 * GIB)
    assert (roomy.rows, roomy.bound_by) == (AUTO_BATCH_CAP, "cap")
    tight = size_cache(NOTEBOOK, torch.float32, None, None, 0.3, available=1 * GIB)
    assert tight.bound_by == "budget" and tight.rows == int(0.3 * GIB) // kv_row_bytes(NOTEBOOK, torch.float32)
    assert tight.cache_bytes <= 0.3 * GIB
    half = size_cache(NOTEBOOK, torch.bfloat16, None, None, 0.3, available=1 * GIB)
    assert half.rows == 2 * tight.rows  # a narrower cache dtype fits twice the rows
    assert size_cache(NOTEBOOK, torch.float32, None, None, 0.3, available=0).rows == 1  # never zero


def test_explicit_settings_win_but_never_past_the_budget() -> None:
    row = kv_row_bytes(NOTEBOOK, torch.float32)
    assert size_cache(NOTEBOOK, torch.float32, 64, None, 0.3, available=16 * GIB).rows == 64
    assert size_cache(NOTEBOOK, torch.float32, 512, None, 0.9, available=16 * GIB).rows == 512  # above the cap
    by_bytes = size_cache(NOTEBOOK, torch.float32, None, 10 * row, 0.3, available=16 * GIB)
    assert (by_bytes.rows, by_bytes.bound_by) == (10, "budget")  # max_kv_cache_bytes replaces the fraction
    lowered = size_cache(NOTEBOOK, torch.float32, 64, 10 * row, 0.3, available=16 * GIB)
    assert (lowered.rows, lowered.bound_by) == (10, "budget")


def test_available_memory_is_positive_and_below_the_machine_total() -> None:
    available = available_memory(torch.device("cpu"))
    total = next((int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:")), None) if Path("/proc/meminfo").exists() else None
    assert available > 0
    if total is not None:
        assert available <= total


async def test_server_sizes_the_batch_from_memory_by_default(make_server: ServerFactory) -> None:
    roomy = await make_server()
    write_checkpoint(roomy.models_dir / "tiny")  # 2 layers, 32 wide, block 32: 16 KiB a row
    await roomy.load("tiny", "tiny")
    engine = roomy.server.registry.models["tiny"].engine
    assert engine.max_batch == AUTO_BATCH_CAP and engine.cache.batch_size == AUTO_BATCH_CAP
    tight = await make_server(max_kv_cache_bytes=1 << 20)  # the same models root
    await tight.load("tiny", "tiny")
    assert tight.server.registry.models["tiny"].engine.max_batch == (1 << 20) // (2 * 2 * 32 * 32 * 4)


async def test_256_concurrent_streams_decode_in_one_batch(served: Served) -> None:
    """With the default sizing nobody waits for a slot: every stream joins the batch (the old 64 rows queued)."""
    request = inference_pb2.GenerateRequest(model="tiny", prompt="a", max_new_tokens=80, seed=1)
    replies = await asyncio.gather(*[served.stub.Generate(request, timeout=120) for _ in range(256)])
    assert {len(r.text) for r in replies} == {80} and len({r.text for r in replies}) == 1  # same seed, same text
    count = served.metric("chargpt_inference_batch_size_count", model="tiny")
    assert served.metric("chargpt_inference_batch_size_bucket", model="tiny", le="128.0") < count  # > 128 rows
