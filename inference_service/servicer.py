"""InferenceService handlers: validate, convert, call the engine, convert back."""

from __future__ import annotations

from chargpt.v1 import inference_pb2_grpc


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Every RPC of the v1 API; those not built yet answer UNIMPLEMENTED."""
