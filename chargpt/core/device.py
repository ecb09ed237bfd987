"""Device probing and auto-sizing: find the accelerator and pick a model and batch that fit it (table-driven)."""

from __future__ import annotations

import os
import platform
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chargpt.errors import FailedPreconditionError, InvalidArgumentError

GIB = 1024**3
# What a request or a setting may name: "" and "auto" pick the best device present; cuda:N one GPU of many.
DEVICE_SPEC = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")


class DeviceFacts(BaseModel):
    """What the probe found; tests build these by hand to fake a device."""

    model_config = ConfigDict(frozen=True)

    type: str = Field(description="cuda, mps or cpu")
    name: str = ""
    count: int = 1
    memory_bytes: int = 0
    bf16_supported: bool = False
    cpu_cores: int = 1
    compute_capability: str = ""


class SizeProfile(BaseModel):
    """A model shape with the batch and schedule that train it well; rows of the sizing table."""

    model_config = ConfigDict(frozen=True)

    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    dropout: float
    learning_rate: float
    max_steps: int
    warmup_steps: int
    optimizer: Literal["adamw", "muon"] = "adamw"
    min_lr_ratio: float = 0.1  # where the decay ends, as a fraction of learning_rate


# Named size profiles (the API's model "presets"), smallest first. "small" is the notebook's model (~10.7M
# parameters with 65 characters).
SIZE_PROFILES: dict[str, SizeProfile] = {p.name: p for p in (
    # cpu: tuned for short CPU budgets (bench/train_quality.py): a small model seeing many small batches at a
    # high learning rate beats a wider one seeing fewer (100 s on 2 cores: 4x128/batch 32/lr 2e-3 val 1.91,
    # lr 8e-3 1.75, 4x96/batch 16 1.67, 4x64/batch 16/lr 1.2e-2 1.65). Muon for the hidden matrices: 0.26 nats
    # lower after 600 steps than AdamW at 1.2e-2 (1.822 vs 2.085; lr 2e-2 1.806) for ~1.2x the step time
    # (trainer_service/training/README.md). Decaying to zero rather than lr/10: 0.02-0.03 nats lower in 100 s, in
    # three back-to-back pairs on one host (1.593/1.578/1.567 vs 1.613/1.612/1.586). Block 64 x batch 32 rather
    # than 128 x 16 (the same tokens per step; attention costs half, so ~15% more steps): 1.576/1.555/1.551/1.559
    # vs 1.571/1.578/1.570/1.583 in four interleaved pairs (trainer_service/training/README.md).
    SizeProfile(name="cpu", n_layer=4, n_head=4, n_embd=64, block_size=64, batch_size=32, dropout=0.0,
                learning_rate=2e-2, max_steps=5000, warmup_steps=50, optimizer="muon", min_lr_ratio=0.0),
    SizeProfile(name="tiny", n_layer=4, n_head=4, n_embd=256, block_size=128, batch_size=32, dropout=0.1,
                learning_rate=1e-3, max_steps=3000, warmup_steps=100),
    SizeProfile(name="small", n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
                learning_rate=1e-3, max_steps=5000, warmup_steps=100),
    SizeProfile(name="medium", n_layer=8, n_head=8, n_embd=512, block_size=256, batch_size=64, dropout=0.2,
                learning_rate=6e-4, max_steps=5000, warmup_steps=200),
    SizeProfile(name="large", n_layer=10, n_head=10, n_embd=640, block_size=256, batch_size=64, dropout=0.2,
                learning_rate=5e-4, max_steps=6000, warmup_steps=200),
    SizeProfile(name="xl", n_layer=12, n_head=12, n_embd=768, block_size=256, batch_size=64, dropout=0.2,
                learning_rate=4e-4, max_steps=6000, warmup_steps=300),
)}

# (minimum device memory in GiB, size profile) for accelerators, largest first: more memory, bigger model.
GPU_SIZING: list[tuple[float, str]] = [(120, "xl"), (64, "large"), (36, "medium"), (16, "small"), (7, "tiny")]
MPS_PROFILE = "tiny"
CPU_PROFILE = "cpu"


def auto_size(facts: DeviceFacts) -> SizeProfile:
    """The largest size profile the device's memory (or, on CPU, its speed) comfortably trains."""
    if facts.type == "cpu":
        return SIZE_PROFILES[CPU_PROFILE]
    if facts.type == "mps":
        return SIZE_PROFILES[MPS_PROFILE]
    memory_gib = facts.memory_bytes / GIB
    for min_gib, name in GPU_SIZING:
        if memory_gib >= min_gib:
            return SIZE_PROFILES[name]
    # A small GPU: the notebook's width at half the batch still fits in a few GiB.
    return SIZE_PROFILES["tiny"].model_copy(update={"batch_size": 16})


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity API
        return os.cpu_count() or 1


def set_torch_threads(threads: int) -> None:
    """Set the calling OS thread's torch (intra-op) thread count.

    With torch's OpenMP builds the count belongs to each OS thread once it has run an op, and a new thread starts
    from the count last set by any thread; its first op re-reads that, replacing a count the thread set before it.
    Reading the count first settles the thread, so the setting sticks whatever other threads set later."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def system_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def cpu_supports_bf16() -> bool:
    """AVX-512 BF16 or AMX on x86, or the Arm BF16 extension: where bf16 autocast actually speeds up."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16", " bf16"))


def probe_device(preference: str = "auto") -> DeviceFacts:
    """Facts about the device `preference` names ("auto", "cpu", "cuda", "cuda:N", "mps")."""
    import torch

    want = preference.split(":")[0] if preference and preference != "auto" else ""
    if want in ("", "cuda") and torch.cuda.is_available():
        index = int(preference.split(":")[1]) if ":" in preference else 0
        props = torch.cuda.get_device_properties(index)
        return DeviceFacts(type="cuda", name=props.name, count=torch.cuda.device_count(),
                           memory_bytes=props.total_memory, bf16_supported=torch.cuda.is_bf16_supported(),
                           cpu_cores=cpu_cores(), compute_capability=f"{props.major}.{props.minor}")
    if want == "cuda":
        raise RuntimeError("CUDA was requested but is not available")
    mps = getattr(torch.backends, "mps", None)
    if want in ("", "mps") and mps is not None and mps.is_available():
        return DeviceFacts(type="mps", name="Apple GPU", memory_bytes=system_memory_bytes(),
                           bf16_supported=False, cpu_cores=cpu_cores())
    if want == "mps":
        raise RuntimeError("MPS was requested but is not available")
    return DeviceFacts(type="cpu", name=platform.processor() or platform.machine(),
                       memory_bytes=system_memory_bytes(), bf16_supported=cpu_supports_bf16(),
                       cpu_cores=cpu_cores())


def torch_device_string(facts: DeviceFacts, preference: str = "auto") -> str:
    """The torch device string for a probed device, keeping an explicit index such as cuda:1."""
    if facts.type == "cuda" and ":" in preference:
        return preference
    return facts.type


def parse_device(spec: str, field: str = "device") -> str:
    """The normalised device string ("" becomes "auto"); InvalidArgumentError naming `field` if malformed."""
    device = spec.strip().lower() or "auto"
    if not DEVICE_SPEC.fullmatch(device):
        raise InvalidArgumentError(field, f"must be auto, cpu, cuda, cuda:N or mps (got {spec!r})")
    return device


def resolve_device(spec: str, field: str = "device") -> tuple[str, DeviceFacts]:
    """Parse and probe a device string: the torch device ("cpu", "mps", "cuda" or "cuda:N") and its facts.

    A malformed string is INVALID_ARGUMENT; a well-formed one this machine lacks (cuda without a GPU, cuda:7 on
    a one-GPU host) is FAILED_PRECONDITION; both name `field`.
    """
    device = parse_device(spec, field)
    try:
        facts = probe_device(device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise FailedPreconditionError(f"{field}: {device!r} is not usable on this server: {exc}") from None
    return torch_device_string(facts, device), facts
