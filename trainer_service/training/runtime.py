"""Where and how a training process runs: device, torchrun/DDP rank, precision, compilation, threads, batch shares."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from chargpt.core.calibration import Calibrator
from chargpt.core.device import cpu_cores, probe_device, torch_device_string
from chargpt.core.measurements import TrainStep
from chargpt.core.training_choices import train_precision
from chargpt.errors import FailedPreconditionError
from trainer_service.training.api import TrainingPlan, check_precision

CPU_MICRO_BATCH_TOKENS = 2048


@dataclass(frozen=True)
class Runtime:
    """One process's place in the job and the numeric settings it trains with."""

    device: torch.device
    rank: int
    local_rank: int
    world_size: int
    autocast_dtype: torch.dtype | None  # None: plain fp32
    compile: bool
    owns_process_group: bool  # we initialised it, so we tear it down
    max_micro_batch_tokens: int | None = None  # None: a rank's share runs as one forward pass
    fast_dropout: bool = False  # masks from chargpt.core.dropout instead of torch's generator

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def uses_grad_scaler(self) -> bool:
        return self.autocast_dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def resolve_runtime(plan: TrainingPlan) -> Runtime:
    """Join the torchrun process group when launched by it, pick the device and numerics, set threads."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    device = _resolve_device(plan.device, local_rank if world_size > 1 else None)
    owns_group = False
    if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns_group = True
    torch.set_num_threads(training_threads(local_world))
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for whatever autocast leaves in fp32
    compile = plan.compile == "on" or (plan.compile == "auto" and device.type == "cuda")
    return Runtime(device=device, rank=rank, local_rank=local_rank, world_size=world_size,
                   autocast_dtype=resolve_precision(plan.precision, device, plan), compile=compile,
                   owns_process_group=owns_group, max_micro_batch_tokens=micro_batch_tokens(device),
                   # On CPU torch's generator is the bottleneck; on GPUs (Philox, fused by compile) it is not.
                   fast_dropout=device.type == "cpu" and not compile)


def training_threads(local_world_size: int) -> int:
    """Intra-op threads: this machine's cores shared among the local ranks, unless CHARGPT_TRAIN_THREADS says."""
    override = os.environ.get("CHARGPT_TRAIN_THREADS", "")
    if override.isdigit() and int(override) > 0:
        return int(override)
    return max(1, cpu_cores() // max(1, local_world_size))


def micro_batch_tokens(device: torch.device) -> int | None:
    """The most tokens one forward/backward pass takes on this device; larger batches accumulate gradients.

    On CPU a step's activations are fresh allocations: at the notebook's 64 x 256 tokens each MLP activation is
    100 MB, past glibc's 32 MB mmap ceiling, so every step maps, page-faults and unmaps gigabytes and works out
    of DRAM. Passes of 2,048 tokens stay in the malloc heap and in cache: 2.0x the steps/s on a 2-core
    Xeon VM (bench/train_throughput.py), with the same gradient. GPUs have a caching allocator.
    CHARGPT_TRAIN_MICRO_TOKENS overrides (0: never split).
    """
    override = os.environ.get("CHARGPT_TRAIN_MICRO_TOKENS", "")
    if override.isdigit():
        return int(override) or None
    return CPU_MICRO_BATCH_TOKENS if device.type == "cpu" else None


def _resolve_device(preference: str, local_rank: int | None) -> torch.device:
    try:
        facts = probe_device(preference)
    except RuntimeError as exc:
        raise FailedPreconditionError(f"training.device: {exc}") from None
    name = torch_device_string(facts, preference)
    if facts.type == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"  # one GPU per torchrun process
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device, plan: TrainingPlan | None = None) -> torch.dtype | None:
    """The autocast dtype for a precision setting, or None for fp32; rejects what the device cannot do."""
    check_precision(precision, device.type, device.type != "cuda" or torch.cuda.is_bf16_supported())
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_is_faster(device, plan) else None  # auto


def bf16_is_faster(device: torch.device, plan: TrainingPlan | None = None) -> bool:
    """Whether bf16 autocast speeds training up on this device (what precision "auto" picks).

    On CUDA, whenever the GPU supports bf16. On CPUs by measurement, never by CPU flags: hosts with the same
    flags ran bf16 GEMMs at 0.5x and at 4.4x fp32 (issue 13), and small models lose to autocast's casts even
    where bf16 GEMMs are fast. The host's GEMM peaks rule bf16 out at once where its GEMMs run at under half
    fp32's speed (GemmPeak.bf16_hopeless); otherwise the plan's model is timed at this rank's micro-batch
    (chargpt.core.calibration, cached per host in CHARGPT_CALIBRATION_DIR). Without a plan, CPUs train in fp32.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu" or plan is None or Calibrator(device="cpu").gemm_peak().bf16_hopeless:
        return False  # hopeless bf16 GEMMs (emulated): no need to time the model, a pass would take minutes
    return train_precision(device.type, True, measured_train_step(device, plan)) == "bf16"


def measured_train_step(device: torch.device, plan: TrainingPlan) -> TrainStep:
    """The calibration of this job's forward+backward pass, at the rows one pass of this rank takes."""
    rows = max(1, plan.batch_size // (plan.num_processes * plan.grad_accumulation_steps))
    limit = micro_batch_tokens(device)
    if limit:
        rows = max(1, min(rows, limit // plan.model.block_size))
    return Calibrator(device=device.type).train_step(plan.model, rows)


def all_agree(flag: bool, runtime: Runtime) -> bool:
    """True on every rank if it is true on any rank (a stop request seen by one stops all at the same step)."""
    if not runtime.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=runtime.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def from_rank0(value: int, runtime: Runtime) -> int:
    """Rank 0's value on every rank (decisions from timings, which differ between ranks, must agree)."""
    if not runtime.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=runtime.device)
    dist.broadcast(t, src=0)
    return int(t.item())


def all_sum(values: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    if runtime.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


@contextlib.contextmanager
def process_group(runtime: Runtime) -> Iterator[Runtime]:
    """Tear down the process group we created, however training ends."""
    try:
        yield runtime
    finally:
        if runtime.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` items in `parts` shares differing by at most one, larger shares first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def micro_steps(sequences: int, block: int, accumulation_steps: int, max_tokens: int | None) -> int:
    """Forward/backward passes per optimizer step: the plan's accumulation steps, or more to stay under max_tokens."""
    if max_tokens is None:
        return accumulation_steps
    per_pass = max(1, max_tokens // block)
    return min(sequences, max(accumulation_steps, -(-sequences // per_pass)))
