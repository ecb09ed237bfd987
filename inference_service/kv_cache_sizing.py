"""KV-cache sizing from memory: how many batch rows a model gets when it loads."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from chargpt.core.config import ModelConfig

log = logging.getLogger(__name__)
AUTO_BATCH_CAP = 256  # past this a CPU decode step's latency grows faster than its throughput
CGROUP = Path("/sys/fs/cgroup")


def kv_row_bytes(config: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes of keys and values one cache row (one sequence, block_size positions) takes."""
    return 2 * config.n_layer * config.block_size * config.n_embd * dtype.itemsize


def available_memory(device: torch.device) -> int:
    """Bytes the process could still allocate on `device`: free GPU memory, or host memory that is available
    (page cache counts as free) within the container's cgroup limit."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    candidates = [_meminfo_available()]
    limit = _cgroup_headroom()
    if limit is not None:
        candidates.append(limit)
    return min(candidates)


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    # No /proc (macOS): free pages only, an underestimate that errs on the safe side.
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _cgroup_headroom() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), None when unlimited or unknown."""
    try:
        relative = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1]
        group = CGROUP / relative.lstrip("/")
        limit = (group / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((group / "memory.current").read_text()))
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class CacheSize:
    """The batch rows chosen for a model and which limit chose them."""

    rows: int
    row_bytes: int
    budget_bytes: int
    bound_by: str  # "max_batch_size", "cap" (AUTO_BATCH_CAP) or "budget"

    @property
    def cache_bytes(self) -> int:
        return self.rows * self.row_bytes


def size_cache(config: ModelConfig, dtype: torch.dtype, max_batch_size: int | None, max_kv_cache_bytes: int | None,
               memory_fraction: float, available: int) -> CacheSize:
    """Batch rows: max_batch_size (default AUTO_BATCH_CAP), lowered to what the KV-cache budget holds (at least
    one). The budget is max_kv_cache_bytes if set, else `memory_fraction` of the memory available now."""
    row = kv_row_bytes(config, dtype)
    budget = max_kv_cache_bytes if max_kv_cache_bytes is not None else int(available * memory_fraction)
    fits = max(1, budget // row)
    wanted = max_batch_size if max_batch_size is not None else AUTO_BATCH_CAP
    if fits < wanted:
        if max_batch_size is not None:
            log.warning("max_batch_size %d lowered to %d: the KV-cache budget of %d MiB holds %d rows of %d KiB",
                        max_batch_size, fits, budget >> 20, fits, row >> 10)
        return CacheSize(rows=fits, row_bytes=row, budget_bytes=budget, bound_by="budget")
    return CacheSize(rows=wanted, row_bytes=row, budget_bytes=budget,
                     bound_by="max_batch_size" if max_batch_size is not None else "cap")
