"""GetDeviceInfo's answer: the device, the size and precision `auto` picks on it, and the figures measured there."""

from __future__ import annotations

from chargpt.core.device import SIZE_PROFILES, DeviceFacts, auto_size
from chargpt.core.training_choices import train_precision
from chargpt.v1 import common_pb2, trainer_pb2
from chargpt.wire.calibration_state import CalibrationState
from trainer_service.jobs.plan import DeviceProber


def device_info_proto(facts: DeviceFacts) -> common_pb2.DeviceInfo:
    return common_pb2.DeviceInfo(type=facts.type, name=facts.name, count=facts.count,
                                 memory_bytes=facts.memory_bytes, bf16_supported=facts.bf16_supported,
                                 cpu_cores=facts.cpu_cores, compute_capability=facts.compute_capability)


def device_report(prober: DeviceProber, recalibrate: bool = False) -> trainer_pb2.GetDeviceInfoResponse:
    """The report for the default device, from the figures measured so far: never waits for a measurement (on CPU
    it runs in the background from start-up, or from `recalibrate`; the size table's defaults answer until then)."""
    facts = prober.facts("auto")
    calibration = prober.calibration if facts.type == "cpu" else None
    if calibration is not None and recalibrate:
        calibration.recalibrate()
    choice = prober.size_choice(facts)
    size = choice.profile if choice else auto_size(facts)
    auto_model = common_pb2.ModelConfig(n_layer=size.n_layer, n_head=size.n_head, n_embd=size.n_embd,
                                        block_size=size.block_size, dropout=size.dropout)
    state = calibration.state if calibration is not None else CalibrationState.NOT_MEASURED
    response = trainer_pb2.GetDeviceInfoResponse(
        device=device_info_proto(facts), auto_model=auto_model, auto_batch_size=size.batch_size,
        presets=list(SIZE_PROFILES), auto_preset=size.name, auto_max_steps=size.max_steps,
        auto_precision=choice.precision if choice else train_precision(facts.type, facts.bf16_supported, None),
        calibration=state.proto())
    peak = calibration.peak if calibration is not None else None
    if choice is not None and calibration is not None and peak is not None:
        response.gemm_gflops_fp32, response.gemm_gflops_bf16 = peak.gflops_fp32, peak.gflops_bf16
        response.candidate_tokens_per_second.update(choice.tokens_per_s)
        measured = calibration.calibrator.measured_at("gemm")
        if measured is not None:
            response.calibrated_time.FromNanoseconds(int(measured[0] * 1e9))
            response.calibration_seconds = calibration.calibrator.total_seconds()
    return response
