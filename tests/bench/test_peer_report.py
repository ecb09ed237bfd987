"""bench.peers' arithmetic on given figures: ratios to llama-server, issue 25's PASS/MISS, greedy parity's index."""

from __future__ import annotations

from typing import Any

import pytest

from bench.peer_report import Scale, first_difference, peer_rows, targets
from bench.serving_common import Tally
from chargpt.core.config import ModelConfig

SCALE = Scale(ModelConfig(vocab_size=65), 10, (1, 4), 8, 5)


class Named:
    def __init__(self, name: str, in_process: bool = False) -> None:
        self.name, self.in_process = name, in_process


def tally(streams: int, seconds: float, ttft: float, tokens: int = 10) -> Tally:
    t = Tally()
    t.add([{"tokens": tokens, "ttft": ttft, "gaps": [0.001] * tokens, "total": seconds}] * streams, seconds, seconds,
          0.0)
    return t


def rows(http_4_seconds: float, llama: bool = True) -> dict[str, Any]:
    names = ["chargpt_grpc", "chargpt_http", *(["llama_server"] if llama else [])]
    tallies = {name: {1: tally(1, 0.1, 0.010), 4: tally(4, 0.2, 0.040)} for name in names}
    tallies["chargpt_http"] = {1: tally(1, 0.2, 0.010), 4: tally(4, http_4_seconds, 0.015)}  # 1 stream: half the rate
    missing = {} if llama else {"llama_server": "not found — see README 'Serving peers'"}
    return peer_rows([Named(n) for n in names], missing, tallies, tally(8, 0.5, 0.2), SCALE)  # type: ignore[misc]


def test_ratios_and_targets_against_llama_server() -> None:
    out = rows(http_4_seconds=0.1)  # twice llama-server's rate at 4 streams, TTFT 15 ms against its 40
    versus = out["chargpt_http"]["streams"]["4"]["vs_llama_server"]
    assert versus["tok_s"] == pytest.approx(2.0) and versus["ttft_p99_ms"] == pytest.approx(15 / 40)
    assert "vs_llama_server" not in out["llama_server"]["streams"]["4"]
    assert out["chargpt_http"]["streams"]["1"]["vs_llama_server"]["tok_s"] == pytest.approx(0.5)
    assert [t["status"] for t in targets(out, SCALE)] == ["MISS", "PASS", "PASS", "PASS", "PASS"]  # TTFT equal


def test_slower_http_misses_and_a_missing_llama_server_leaves_its_targets_open() -> None:
    assert targets(rows(http_4_seconds=0.3), SCALE)[2]["status"] == "MISS"
    out = rows(http_4_seconds=0.1, llama=False)
    assert out["llama_server"] == {"label": "llama-server", "available": False, "in_process": False,
                                   "reason": "not found — see README 'Serving peers'", "streams": {}}
    assert [t["status"].split()[0] for t in targets(out, SCALE)] == ["n/a"] * 4 + ["PASS"]
    assert out["chargpt_grpc"]["streams"]["8"]["short_streams"] == 0


def test_short_streams_are_counted() -> None:
    t = tally(3, 0.1, 0.01, tokens=9)
    out = peer_rows([Named("chargpt_grpc"), Named("chargpt_http")], {"llama_server": "absent"},  # type: ignore[list-item]
                    {"chargpt_grpc": {1: t, 4: t}, "chargpt_http": {1: t, 4: t}}, t, SCALE)
    assert out["chargpt_http"]["streams"]["4"]["short_streams"] == 3


def test_first_difference() -> None:
    assert first_difference("abc", "abc") is None
    assert first_difference("abc", "abd") == 2
    assert first_difference("abc", "ab") == 2
    assert first_difference("", "x") == 0
