"""Turning a CreateTrainingJobRequest into a validated TrainingPlan (every default applied, every field checked)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from chargpt.core.calibrated import SizeChoice, auto_profile, calibrated_size
from chargpt.core.calibration import Calibrator
from chargpt.core.config import ModelConfig
from chargpt.core.device import PRESETS, DeviceFacts, SizeProfile
from chargpt.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError
from chargpt.v1 import trainer_pb2
from trainer_service.store import CorpusRecord
from trainer_service.training.api import TrainingPlan

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")
PRECISIONS = {trainer_pb2.PRECISION_UNSPECIFIED: "auto", trainer_pb2.PRECISION_AUTO: "auto",
              trainer_pb2.PRECISION_FP32: "fp32", trainer_pb2.PRECISION_BF16: "bf16",
              trainer_pb2.PRECISION_FP16: "fp16"}
COMPILE_MODES = {trainer_pb2.COMPILE_MODE_UNSPECIFIED: "auto", trainer_pb2.COMPILE_MODE_AUTO: "auto",
                 trainer_pb2.COMPILE_MODE_ON: "on", trainer_pb2.COMPILE_MODE_OFF: "off"}
LR_SCHEDULES = {trainer_pb2.LR_SCHEDULE_UNSPECIFIED: "cosine", trainer_pb2.LR_SCHEDULE_COSINE: "cosine",
                trainer_pb2.LR_SCHEDULE_CONSTANT: "constant", trainer_pb2.LR_SCHEDULE_LINEAR: "linear"}
MAX_STEPS_LIMIT = 10_000_000
MAX_BATCH_SIZE = 65_536
MAX_SAMPLE_LENGTH = 100_000
MAX_LEARNING_RATE = 10.0


class DeviceProber:
    """Device facts per device string, probed once each (the probe imports torch)."""

    def __init__(self, default_device: str, calibrator: Calibrator | None = None) -> None:
        self.default_device = default_device
        self.calibrator = calibrator  # None: size auto from the table alone (no measurement)
        self._facts: dict[str, DeviceFacts] = {}

    def size_choice(self, facts: DeviceFacts) -> SizeChoice | None:
        """The measured CPU size choice (None off CPU or without a calibrator)."""
        return calibrated_size(facts, self.calibrator)

    def auto_profile(self, facts: DeviceFacts) -> SizeProfile:
        return auto_profile(facts, self.calibrator)

    def facts(self, device: str, field: str = "resources.device") -> DeviceFacts:
        device = self.default_device if device in ("", "auto") else device
        if device not in self._facts:
            from chargpt.core.device import probe_device

            try:
                self._facts[device] = probe_device(device)
            except (RuntimeError, AssertionError, ValueError) as exc:
                raise FailedPreconditionError(f"{field}: {device!r} is not usable on this server: {exc}") from None
        return self._facts[device]


def concrete_device(facts: DeviceFacts, requested: str, default: str) -> str:
    """The device string the job runs on: "cpu", "mps", "cuda" or "cuda:N"."""
    chosen = default if requested in ("", "auto") else requested
    if facts.type == "cuda" and ":" in chosen:
        return chosen
    return facts.type


def build_plan(job_id: str, request: trainer_pb2.CreateTrainingJobRequest, corpus: CorpusRecord,
               prober: DeviceProber, max_processes: int) -> TrainingPlan:
    device, num_processes, facts = _resources(request.resources, prober, max_processes)
    profile = prober.auto_profile(facts)
    model = _model(request.model, profile, corpus)
    _check_fits(model, facts)
    training = _training(request.training, profile, num_processes, facts)
    plan = _validated_plan(dict(job_id=job_id, model=model, device=device, num_processes=num_processes,
                                **training))
    return plan


# fp32 weights, gradients and AdamW's two moments: the least a training step holds per parameter.
TRAINING_BYTES_PER_PARAMETER = 16


def _check_fits(model: ModelConfig, facts: DeviceFacts) -> None:
    """Refuse models whose training state alone exceeds the device's memory (a fuzzed n_layer=128,
    n_embd=16384 would otherwise be queued and then exhaust the machine)."""
    needed = model.parameter_count() * TRAINING_BYTES_PER_PARAMETER
    if facts.memory_bytes and needed > facts.memory_bytes:
        raise ResourceExhaustedError(f"model: {model.parameter_count():,} parameters need at least {needed / 1e9:.1f} "
                                     f"GB to train (weights, gradients, optimizer state); the {facts.type} device "
                                     f"has {facts.memory_bytes / 1e9:.1f} GB")


def _validated_plan(values: dict[str, Any]) -> TrainingPlan:
    try:
        return TrainingPlan(**values)
    except ValidationError as exc:  # a bound the explicit checks missed; name the field the user set
        first = exc.errors()[0]
        field = "training." + ".".join(str(p) for p in first["loc"])
        raise InvalidArgumentError(field, str(first["msg"])) from None


def _resources(spec: trainer_pb2.ResourceSpec, prober: DeviceProber, max_processes: int
               ) -> tuple[str, int, DeviceFacts]:
    requested = spec.device.strip().lower()
    if requested and not DEVICE_PATTERN.fullmatch(requested):
        raise InvalidArgumentError("resources.device", f"must be auto, cpu, cuda, cuda:N or mps (got {spec.device!r})")
    num_processes = spec.num_processes or 1
    if num_processes < 1 or num_processes > max_processes:
        raise InvalidArgumentError("resources.num_processes",
                                   f"must be between 1 and {max_processes} (got {spec.num_processes})")
    facts = prober.facts(requested)
    device = concrete_device(facts, requested, prober.default_device)
    if num_processes > 1 and facts.type == "mps":
        raise InvalidArgumentError("resources.num_processes", "MPS trains in a single process")
    if num_processes > 1 and facts.type == "cuda":
        if ":" in device:
            raise InvalidArgumentError("resources.num_processes",
                                       f"{device} names one GPU; use device 'cuda' for {num_processes} processes")
        if num_processes > facts.count:
            raise InvalidArgumentError("resources.num_processes", f"{num_processes} processes need "
                                       f"{num_processes} GPUs; this server has {facts.count}")
    return device, num_processes, facts


def _model(spec: trainer_pb2.ModelSpec, profile: SizeProfile, corpus: CorpusRecord) -> ModelConfig:
    vocab = len(corpus.vocabulary)
    which = spec.WhichOneof("size")
    if which == "custom":
        model = _custom_model(spec.custom, vocab)
        field = "model.custom.block_size"
    else:
        preset = spec.preset.strip().lower() if which == "preset" else "auto"
        if preset not in ("", "auto") and preset not in PRESETS:
            raise InvalidArgumentError("model.preset", f"unknown preset {spec.preset!r}; valid: auto, "
                                       f"{', '.join(PRESETS)}")
        p = profile if preset in ("", "auto") else PRESETS[preset]
        model = ModelConfig(vocab_size=vocab, n_layer=p.n_layer, n_head=p.n_head, n_embd=p.n_embd,
                            block_size=p.block_size, dropout=p.dropout)
        field = "model"
    limit = min(corpus.train_chars, corpus.val_chars) - 1
    if model.block_size > limit:
        raise InvalidArgumentError(field, f"block size {model.block_size} is too large for corpus "
                                   f"{corpus.name!r}: its validation split has {corpus.val_chars} characters, so "
                                   f"the block size can be at most {limit}")
    return model


def _custom_model(custom: Any, vocab: int) -> ModelConfig:
    checks = [("n_layer", custom.n_layer, 1, 128), ("n_head", custom.n_head, 1, 128),
              ("n_embd", custom.n_embd, 1, 16_384), ("block_size", custom.block_size, 1, 65_536)]
    for name, value, low, high in checks:
        if not low <= value <= high:
            raise InvalidArgumentError(f"model.custom.{name}", f"must be between {low} and {high} (got {value})")
    if custom.n_embd % custom.n_head:
        raise InvalidArgumentError("model.custom.n_head", f"must divide n_embd ({custom.n_embd}); "
                                   f"got {custom.n_head}")
    if not (math.isfinite(custom.dropout) and 0.0 <= custom.dropout < 1.0):
        raise InvalidArgumentError("model.custom.dropout", f"must be in [0, 1) (got {custom.dropout})")
    return ModelConfig(vocab_size=vocab, n_layer=custom.n_layer, n_head=custom.n_head, n_embd=custom.n_embd,
                       block_size=custom.block_size, dropout=round(float(custom.dropout), 6), bias=custom.bias)


def _opt(spec: trainer_pb2.TrainingSpec, name: str, default: Any) -> Any:
    return getattr(spec, name) if spec.HasField(name) else default


def _training(spec: trainer_pb2.TrainingSpec, profile: SizeProfile, num_processes: int,
              facts: DeviceFacts) -> dict[str, Any]:
    max_steps = _int(spec, "max_steps", profile.max_steps, 1, MAX_STEPS_LIMIT)
    lr = _float(spec, "learning_rate", profile.learning_rate, positive=True, high=MAX_LEARNING_RATE)
    default_interval = max(1, max_steps // 10)
    values: dict[str, Any] = {
        "max_steps": max_steps,
        "batch_size": _int(spec, "batch_size", profile.batch_size, 1, MAX_BATCH_SIZE),
        "learning_rate": lr,
        "min_learning_rate": _float(spec, "min_learning_rate", lr / 10, high=lr),
        "warmup_steps": _int(spec, "warmup_steps", min(profile.warmup_steps, max_steps // 10), 0, max_steps),
        "weight_decay": _float(spec, "weight_decay", 0.1, high=10.0),
        "grad_clip": _float(spec, "grad_clip", 1.0, high=1e6),
        "eval_interval": _int(spec, "eval_interval", default_interval, 0, MAX_STEPS_LIMIT),
        "sample_interval": _int(spec, "sample_interval", default_interval, 0, MAX_STEPS_LIMIT),
        "sample_length": _int(spec, "sample_length", 200, 1, MAX_SAMPLE_LENGTH),
        "seed": _int(spec, "seed", 1337, 0, 2**63 - 1),
        "checkpoint_interval": _int(spec, "checkpoint_interval", default_interval, 0, MAX_STEPS_LIMIT),
        "grad_accumulation_steps": _int(spec, "grad_accumulation_steps", 1, 1, 1024),
        "lr_schedule": _enum(spec.lr_schedule, LR_SCHEDULES, "training.lr_schedule"),
        "precision": _enum(spec.precision, PRECISIONS, "training.precision"),
        "compile": _enum(spec.compile, COMPILE_MODES, "training.compile"),
    }
    if values["precision"] == "fp16" and facts.type != "cuda":
        raise InvalidArgumentError("training.precision", f"fp16 needs a CUDA device (this job runs on {facts.type})")
    if values["precision"] == "bf16" and (facts.type == "mps" or (facts.type == "cuda" and not facts.bf16_supported)):
        raise InvalidArgumentError("training.precision", f"bf16 is not supported on this {facts.type} device")
    shards = num_processes * values["grad_accumulation_steps"]
    if values["batch_size"] % shards:
        raise InvalidArgumentError("training.batch_size", f"{values['batch_size']} sequences must divide evenly "
                                   f"over {num_processes} processes x {values['grad_accumulation_steps']} "
                                   "accumulation steps")
    return values


def _int(spec: trainer_pb2.TrainingSpec, name: str, default: int, low: int, high: int) -> int:
    value = int(_opt(spec, name, default))
    if not low <= value <= high:
        raise InvalidArgumentError(f"training.{name}", f"must be between {low} and {high} (got {value})")
    return value


def _float(spec: trainer_pb2.TrainingSpec, name: str, default: float, positive: bool = False,
           high: float = math.inf) -> float:
    value = float(_opt(spec, name, default))
    if not math.isfinite(value):
        raise InvalidArgumentError(f"training.{name}", f"must be a finite number (got {value})")
    if value < 0 or (positive and value == 0):
        raise InvalidArgumentError(f"training.{name}", f"must be {'> 0' if positive else '>= 0'} (got {value})")
    if value > high:
        raise InvalidArgumentError(f"training.{name}", f"must be at most {high:g} (got {value})")
    return value


def _enum(value: int, table: Mapping[Any, str], field: str) -> str:
    if value not in table:
        raise InvalidArgumentError(field, f"unknown value {value}")
    return table[value]
