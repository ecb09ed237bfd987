"""Checkpoint kinds: the names manifests, the CLI and the client use ("latest", "best") <-> common.v1.CheckpointKind."""

from __future__ import annotations

from typing import cast

from chargpt.v1 import common_pb2

PREFIX = "CHECKPOINT_KIND_"
# "" is CHECKPOINT_KIND_UNSPECIFIED: in a request, the trainer's default (best if any); in a lineage, a directory.
CHECKPOINT_KINDS: dict[str, common_pb2.CheckpointKind] = {
    (v.name.removeprefix(PREFIX).lower() if v.number else ""): cast(common_pb2.CheckpointKind, v.number)
    for v in common_pb2.CheckpointKind.DESCRIPTOR.values}
KIND_NAMES: dict[int, str] = {number: name for name, number in CHECKPOINT_KINDS.items()}


def kind_number(name: str) -> common_pb2.CheckpointKind:
    """The CheckpointKind of a kind's name; an unknown name is UNSPECIFIED."""
    return CHECKPOINT_KINDS.get(name, common_pb2.CHECKPOINT_KIND_UNSPECIFIED)


def kind_name(number: int) -> str:
    """"latest", "best" or "" (unspecified); a kind newer than this code comes back as its number."""
    return KIND_NAMES.get(number, str(number))
