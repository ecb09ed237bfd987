"""Request priority (vLLM's: lower is admitted first, then arrival), in the scheduler and through the client."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from chargpt_client import AsyncInferenceClient, ClientOptions

from chargpt.core.model import KVCache
from inference_service.engine.request import GenRequest

from .conftest import Served, ServerFactory, write_checkpoint
from .test_engine_parts import CONFIG, greedy, scheduler
from .test_tenant_limits import LONG, _until


def _at(priority: int, prompt: int) -> GenRequest:
    request = greedy([prompt], 3)
    request.priority = priority
    return request


async def test_waiting_requests_are_admitted_by_priority_then_arrival() -> None:
    s = scheduler(KVCache(CONFIG, batch_size=2), max_queue=8)
    late, first, urgent, second, also_urgent = _at(0, 1), _at(0, 2), _at(-1, 3), _at(0, 4), _at(-1, 0)
    s.add((first,))
    s.add((second,))
    s.add((urgent, also_urgent))  # one request's samples stay together
    s.add((late,))
    assert list(s.waiting) == [urgent, also_urgent, first, second, late]
    assert s.take_waiting() == [urgent, also_urgent]  # two free rows
    assert list(s.waiting) == [first, second, late]

async def test_priority_admission(make_server: ServerFactory, tmp_path: Path) -> None:
    """One batch slot, busy: of three waiting requests, the priority -1 one submitted last is admitted first."""
    write_checkpoint(tmp_path / "models" / "tiny")
    s: Served = await make_server(max_batch_size=1, preload="tiny=tiny", max_new_tokens_limit=LONG)
    engine = s.server.registry.models["tiny"].engine
    order: list[str] = []
    async with AsyncInferenceClient(f"127.0.0.1:{s.port}", ClientOptions(timeout=60)) as client:
        busy = client.generate_stream("tiny", "a", max_new_tokens=LONG)
        async with busy:
            async for _ in busy:
                break  # the slot is taken

            async def run(name: str, priority: int) -> None:
                await client.generate("tiny", "a", max_new_tokens=5, priority=priority)
                order.append(name)
            tasks = []
            for name, priority in [("first", 0), ("second", 0), ("urgent", -1)]:
                tasks.append(asyncio.create_task(run(name, priority)))
                waiting = len(tasks)

                async def queued(count: int = waiting) -> bool:
                    return len(engine.scheduler.waiting) == count
                await _until(queued)
            assert [r.priority for r in engine.scheduler.waiting] == [-1, 0, 0]
        await asyncio.gather(*tasks)  # the busy stream closed: the slot serves the queue one by one
    assert order == ["urgent", "first", "second"]
    assert math.isclose(s.metric("chargpt_inference_tenant_requests_total", tenant="default",
                                 outcome="finished"), 3)
