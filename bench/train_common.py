"""Shared benchmark helpers: model FLOPs, load average, writing results (GEMM peaks: bench/host.py)."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from chargpt.core.config import ModelConfig

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CORPUS = Path("/work/shared/data/tinyshakespeare.txt")


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 per weight (forward + backward) plus attention scores and mixing.

    Position embeddings are a lookup, not a matmul, so they are left out of N; the tied token embedding
    counts once, as the output head.
    """
    n = config.parameter_count() - config.block_size * config.n_embd
    attention = 12 * config.n_layer * config.n_embd * seq_len
    return 6 * n + attention


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def machine_facts() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average": load_average(),
            "time": datetime.now(UTC).isoformat()}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    return path


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)
