"""Per-host calibration: the measured figures (chargpt.core.measurements) cached per host, decided from later.

Hosts of one kind differ (issue 13: bf16 GEMMs ran at 0.5x fp32 on one host and 4.4x on another, same CPU
flags), so `precision=auto` and the CPU size are decided by measuring, never by a CPU flag alone.

Results are cached as JSON, one file per host key (CPU model, cores, torch version, device), one entry per
measured shape; `Calibrator.clear()` (or the servers' `recalibrate` setting) measures again. torch is imported
lazily: clients and settings import this module without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from chargpt.core.config import ModelConfig
from chargpt.core.device import cpu_cores
from chargpt.core.measurements import GemmPeak, TrainStep, measure_gemm_peak, measure_train_step, train_gflop

CALIBRATION_DIR_ENV = "CHARGPT_CALIBRATION_DIR"
DEFAULT_DIR = Path("~/.cache/chargpt/calibration")
M = TypeVar("M", bound=BaseModel)


class HostKey(BaseModel):
    """What a cached calibration is valid for."""

    model_config = ConfigDict(frozen=True)

    cpu_model: str
    cpu_cores: int
    torch_version: str
    device: str  # "cpu" or the accelerator's name

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def cpu_model_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def host_key(device: str = "cpu") -> HostKey:
    import torch

    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else device
    return HostKey(cpu_model=cpu_model_name(), cpu_cores=cpu_cores(), torch_version=torch.__version__,
                   device=name)


def default_dir() -> Path:
    return Path(os.environ.get(CALIBRATION_DIR_ENV) or DEFAULT_DIR).expanduser()


class Calibrator:
    """The cached measurements of one host: each entry is measured once, then read back from the JSON file."""

    def __init__(self, directory: Path | None = None, device: str = "cpu") -> None:
        self.directory, self.device = (directory or default_dir()).expanduser(), device
        self._host: HostKey | None = None
        self._lock = threading.RLock()  # one measurement at a time: two at once would time each other

    @property
    def host(self) -> HostKey:
        if self._host is None:
            self._host = host_key(self.device)
        return self._host

    @property
    def path(self) -> Path:
        return self.directory / f"calibration-{self.host.digest()}.json"

    def entries(self) -> dict[str, Any]:
        """Everything cached for this host ({} when nothing is, or the file is unreadable or another host's)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("host") != self.host.model_dump():
            return {}
        entries = data.get("entries", {})
        return entries if isinstance(entries, dict) else {}

    def cached(self, name: str, kind: type[M]) -> M | None:
        raw = self.entries().get(name)
        if not isinstance(raw, dict):
            return None
        try:
            return kind.model_validate(raw["value"])
        except (KeyError, ValueError):
            return None

    def get(self, name: str, kind: type[M], measure: Callable[[], M]) -> M:
        """The cached entry `name`, or measure it now and cache it."""
        with self._lock:
            found = self.cached(name, kind)
            if found is not None:
                return found
            started = time.time()
            value = measure()
            self.put(name, value, started, time.time() - started)
            return value

    def put(self, name: str, value: BaseModel, measured_unix: float | None = None, seconds: float = 0.0) -> None:
        """Cache `value` as entry `name` (tests pre-fill a host's figures this way)."""
        self._store(name, {"value": value.model_dump(mode="json"), "measured_unix": measured_unix or time.time(),
                           "seconds": round(seconds, 3)})

    def measured_at(self, name: str) -> tuple[float, float] | None:
        """(unix time measured, seconds the measurement took) of a cached entry."""
        raw = self.entries().get(name)
        if not isinstance(raw, dict) or "measured_unix" not in raw:
            return None
        return float(raw["measured_unix"]), float(raw.get("seconds", 0.0))

    def total_seconds(self) -> float:
        """How long all of this host's cached measurements took."""
        return sum(float(e.get("seconds", 0.0)) for e in self.entries().values() if isinstance(e, dict))

    def clear(self) -> None:
        """Forget this host's measurements: the next request measures again."""
        self.path.unlink(missing_ok=True)

    def _store(self, name: str, entry: dict[str, Any]) -> None:
        entries = self.entries()
        entries[name] = entry
        self.directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"host": self.host.model_dump(), "entries": entries}, indent=2, sort_keys=True)
        with _atomic(self.path) as tmp:
            tmp.write_text(text, encoding="utf-8")

    # ---- the measurements the decisions use

    def gemm_peak(self) -> GemmPeak:
        return self.get("gemm", GemmPeak, lambda: measure_gemm_peak(self.device))

    def train_step(self, config: ModelConfig, batch: int) -> TrainStep:
        """fp32 against bf16 autocast; fp32 alone on a CPU whose bf16 GEMMs make bf16 hopeless at this size
        (at a notebook size a bf16 pass would take minutes, and it could not win)."""
        def measure() -> TrainStep:
            if self.device == "cpu" and self.gemm_peak().hopeless("bf16", train_gflop(config, batch)):
                return measure_train_step(config, batch, self.device, with_bf16=False)
            return measure_train_step(config, batch, self.device)
        return self.get(train_entry(config, batch), TrainStep, measure)


def train_entry(config: ModelConfig, batch: int, threads: int | None = None) -> str:
    """The cache entry of a training-step measurement (at torch's current thread count unless given)."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    c = config
    return f"train:L{c.n_layer}-H{c.n_head}-C{c.n_embd}-T{c.block_size}-V{c.vocab_size}-B{batch}:threads{threads}"


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary sibling renamed over `path` once written: readers never see half a file."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
