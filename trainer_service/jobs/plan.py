"""Turning a JobRequest into a validated TrainingPlan (every default applied, every field checked).

The bounds live in the schemas (TrainingPlan, ModelConfig), the defaults in training/defaults.py; this module
resolves the device and model size, validates once, and names the request field of the first error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chargpt.core.config import ModelConfig
from chargpt.core.device import SIZE_PROFILES, DeviceFacts, SizeProfile, auto_size, parse_device, resolve_device
from chargpt.core.training_choices import SizeChoice
from chargpt.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError, validated
from trainer_service.host_calibration import HostCalibration
from trainer_service.jobs.parent import Parent
from trainer_service.jobs.request import JobRequest
from trainer_service.store_records import CorpusRecord
from trainer_service.training.api import TrainingPlan, check_precision, tensorboard_run_name
from trainer_service.training.defaults import training_defaults

RESOURCE_FIELDS = ("device", "num_processes", "num_nodes")  # plan fields from the request's ResourceSpec


class DeviceProber:
    """Device facts per device string, probed once each (the probe imports torch)."""

    def __init__(self, default_device: str, calibration: HostCalibration | None = None) -> None:
        self.default_device = default_device
        self.calibration = calibration  # None: size auto from the table alone (no measurement)
        self._facts: dict[str, DeviceFacts] = {}

    def size_choice(self, facts: DeviceFacts) -> SizeChoice | None:
        """The measured CPU size choice (None off CPU, without a calibration, or until it is measured)."""
        if facts.type != "cpu" or self.calibration is None:
            return None
        return self.calibration.size_choice()

    def auto_profile(self, facts: DeviceFacts) -> SizeProfile:
        choice = self.size_choice(facts)
        return choice.profile if choice else auto_size(facts)

    def facts(self, device: str, field: str = "resources.device") -> DeviceFacts:
        device = self.default_device if device in ("", "auto") else device
        if device not in self._facts:
            self._facts[device] = resolve_device(device, field)[1]
        return self._facts[device]


def concrete_device(facts: DeviceFacts, requested: str, default: str) -> str:
    """The device string the job runs on: "cpu", "mps", "cuda" or "cuda:N"."""
    chosen = default if requested in ("", "auto") else requested
    if facts.type == "cuda" and ":" in chosen:
        return chosen
    return facts.type


def build_plan(job_id: str, request: JobRequest, corpus: CorpusRecord, prober: DeviceProber, max_processes: int,
               tensorboard: bool = False, max_nodes: int = 1, parent: Parent | None = None) -> TrainingPlan:
    device, num_processes, facts = _resources(request, prober, max_processes)
    num_nodes = _num_nodes(request.num_nodes, max_nodes)
    profile = prober.auto_profile(facts)
    model = _model(request, profile, corpus) if parent is None else _parent_model(request, parent, corpus)
    _check_fits(model, facts)
    values = training_defaults(request.training, profile, finetune=parent is not None)
    run = tensorboard_run_name(request.display_name) if tensorboard else None
    plan = validated(TrainingPlan, dict(job_id=job_id, model=model, device=device, num_processes=num_processes,
                                        num_nodes=num_nodes, tensorboard_run=run,
                                        init_from=parent.source if parent else None, **values), _plan_field)
    check_precision(plan.precision, facts.type, facts.bf16_supported)
    return plan


def _plan_field(name: str) -> str:
    return f"resources.{name}" if name in RESOURCE_FIELDS else f"training.{name}"


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


def _resources(request: JobRequest, prober: DeviceProber, max_processes: int) -> tuple[str, int, DeviceFacts]:
    requested = parse_device(request.device, "resources.device")
    num_processes = 1 if request.num_processes is None else request.num_processes
    if num_processes > max_processes:  # the server's limit (TrainingPlan holds the lower bound)
        raise InvalidArgumentError("resources.num_processes",
                                   f"at most {max_processes} on this server (got {num_processes})")
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


def _num_nodes(requested: int | None, max_nodes: int) -> int:
    num_nodes = 1 if requested is None else requested
    if num_nodes < 1:
        raise InvalidArgumentError("resources.num_nodes", f"must be at least 1 (got {num_nodes})")
    if num_nodes > max_nodes == 1:
        raise FailedPreconditionError(f"resources.num_nodes: {num_nodes} nodes need the slurm or kubernetes "
                                      "executor; this trainer runs jobs on its own node (executor=local)")
    if num_nodes > max_nodes:
        raise InvalidArgumentError("resources.num_nodes", f"must be between 1 and {max_nodes} (got {num_nodes})")
    return num_nodes


def _model(request: JobRequest, profile: SizeProfile, corpus: CorpusRecord) -> ModelConfig:
    vocab = len(corpus.vocabulary)
    if request.custom is not None:
        model = _custom_model(request.custom, vocab)
        field = "model.custom.block_size"
    else:
        preset = request.preset.strip().lower()
        if preset not in ("", "auto") and preset not in SIZE_PROFILES:
            raise InvalidArgumentError("model.preset", f"unknown preset {request.preset!r}; valid: auto, "
                                       f"{', '.join(SIZE_PROFILES)}")
        p = profile if preset in ("", "auto") else SIZE_PROFILES[preset]
        model = ModelConfig(vocab_size=vocab, n_layer=p.n_layer, n_head=p.n_head, n_embd=p.n_embd,
                            block_size=p.block_size, dropout=p.dropout)
        field = "model"
    limit = min(corpus.train_chars, corpus.val_chars) - 1
    if model.block_size > limit:
        raise InvalidArgumentError(field, f"block size {model.block_size} is too large for corpus "
                                   f"{corpus.name!r}: its validation split has {corpus.val_chars} characters, so "
                                   f"the block size can be at most {limit}")
    return model


def _parent_model(request: JobRequest, parent: Parent, corpus: CorpusRecord) -> ModelConfig:
    """The parent's architecture over the union of both vocabularies; only dropout may differ from it."""
    config = parent.manifest.model
    vocab = len(set(parent.manifest.vocabulary) | set(corpus.vocabulary))
    dropout = config.dropout
    if request.custom is not None:
        requested = _custom_model(request.custom, config.vocab_size)
        for name in ("n_layer", "n_head", "n_embd", "block_size", "bias"):
            if getattr(requested, name) != getattr(config, name):
                raise InvalidArgumentError(f"model.custom.{name}", f"is {getattr(requested, name)} but the "
                                           f"init_from checkpoint has {getattr(config, name)}; a fine-tune keeps "
                                           "its parent's architecture (only dropout may change)")
        dropout = requested.dropout
    elif request.preset.strip().lower() not in ("", "auto"):
        raise InvalidArgumentError("model.preset", "a fine-tune keeps its init_from checkpoint's architecture; "
                                   "leave the preset unset (model.custom may change dropout only)")
    limit = min(corpus.train_chars, corpus.val_chars) - 1
    if config.block_size > limit:
        raise InvalidArgumentError("init_from", f"the checkpoint's context of {config.block_size} characters is "
                                   f"too long for corpus {corpus.name!r} (validation split of {corpus.val_chars})")
    return config.model_copy(update={"vocab_size": vocab, "dropout": dropout})


def _custom_model(custom: Mapping[str, Any], vocab: int) -> ModelConfig:
    return validated(ModelConfig, {**custom, "vocab_size": vocab}, lambda name: f"model.custom.{name}")
