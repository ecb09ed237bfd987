"""TrainerService handlers: validate, convert, call the job layer, convert back."""

from __future__ import annotations

import grpc

from chargpt.core.device import PRESETS, DeviceFacts, auto_size, probe_device
from chargpt.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc


def device_info_proto(facts: DeviceFacts) -> common_pb2.DeviceInfo:
    return common_pb2.DeviceInfo(type=facts.type, name=facts.name, count=facts.count,
                                 memory_bytes=facts.memory_bytes, bf16_supported=facts.bf16_supported,
                                 cpu_cores=facts.cpu_cores, compute_capability=facts.compute_capability)


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """Every RPC of the v1 API; those not built yet answer UNIMPLEMENTED."""

    def __init__(self, device_preference: str) -> None:
        self._facts = probe_device(device_preference)

    async def GetDeviceInfo(self, request: trainer_pb2.GetDeviceInfoRequest,
                            context: grpc.aio.ServicerContext) -> trainer_pb2.GetDeviceInfoResponse:
        size = auto_size(self._facts)
        auto_model = common_pb2.ModelConfig(n_layer=size.n_layer, n_head=size.n_head, n_embd=size.n_embd,
                                            block_size=size.block_size, dropout=size.dropout)
        return trainer_pb2.GetDeviceInfoResponse(device=device_info_proto(self._facts), auto_model=auto_model,
                                                 auto_batch_size=size.batch_size, presets=list(PRESETS))
