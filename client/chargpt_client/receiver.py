"""The client's CheckpointReceiver: the shared one (chargpt.receiver), raising the client's DataLoss and
ResourceExhausted, as every chargpt_client call does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chargpt import errors, receiver
from chargpt.receiver import MAX_FILES, MAX_TOTAL_BYTES, PLAIN_FILE_NAME, SHA256_HEX, IfExists
from chargpt.v1 import trainer_pb2
from chargpt_client.errors import ChargptClientError, DataLoss, ResourceExhausted

__all__ = ["MAX_FILES", "MAX_TOTAL_BYTES", "PLAIN_FILE_NAME", "SHA256_HEX", "CheckpointReceiver", "IfExists"]

CLIENT_ERRORS: dict[type[errors.ChargptError], type[ChargptClientError]] = {
    errors.DataLossError: DataLoss, errors.ResourceExhaustedError: ResourceExhausted}


@contextmanager
def _client_errors() -> Iterator[None]:
    try:
        yield
    except (errors.DataLossError, errors.ResourceExhaustedError) as exc:
        raise CLIENT_ERRORS[type(exc)](str(exc)) from None


class CheckpointReceiver(receiver.CheckpointReceiver):
    """chargpt.receiver.CheckpointReceiver whose stream problems are DataLoss (ResourceExhausted for a header
    over the size cap), the client's errors."""

    def feed(self, message: trainer_pb2.DownloadCheckpointResponse) -> int:
        with _client_errors():
            return super().feed(message)

    def finish(self, name: str, if_exists: IfExists = "error") -> Path:
        with _client_errors():
            return super().finish(name, if_exists)
