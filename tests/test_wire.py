"""The shared wire tables (chargpt.wire): every proto field and enum value has its one home, and both ends agree."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from chargpt_client import from_proto
from chargpt_client import types as t

from chargpt.core.checkpoint import Lineage
from chargpt.core.config import ModelConfig
from chargpt.v1 import common_pb2
from chargpt.wire.checkpoint_kinds import CHECKPOINT_KINDS, kind_name, kind_number
from chargpt.wire.fields import field_names
from chargpt.wire.lineage import lineage_proto, lineage_values
from chargpt.wire.model_config import model_config_proto, model_config_values


def test_every_checkpoint_kind_has_one_name() -> None:
    assert CHECKPOINT_KINDS == {"": common_pb2.CHECKPOINT_KIND_UNSPECIFIED,
                                "latest": common_pb2.CHECKPOINT_KIND_LATEST, "best": common_pb2.CHECKPOINT_KIND_BEST}
    assert sorted(CHECKPOINT_KINDS.values()) == sorted(common_pb2.CheckpointKind.values())
    assert all(kind_name(kind_number(name)) == name for name in CHECKPOINT_KINDS)
    assert kind_number("oldest") == common_pb2.CHECKPOINT_KIND_UNSPECIFIED
    assert kind_name(99) == "99"  # a kind newer than this code is shown, not dropped


def test_model_config_fields_are_the_protos_on_both_ends() -> None:
    """A ModelConfig field added to the proto must exist in the core's model and the client's type."""
    names = set(field_names(common_pb2.ModelConfig))
    assert names == set(ModelConfig.model_fields) == {f.name for f in dataclasses.fields(t.ModelConfig)}


def test_model_config_round_trips_from_the_core_to_the_client() -> None:
    core = ModelConfig(vocab_size=65, n_layer=3, n_head=2, n_embd=32, block_size=64, dropout=0.1, bias=True)
    message = model_config_proto(core)
    assert message.dropout != 0.1  # a float32 on the wire
    assert from_proto.model_config(message) == t.ModelConfig(**core.model_dump())
    assert model_config_values(message)["dropout"] == 0.1


def test_lineage_fields_are_the_protos_on_both_ends() -> None:
    names = set(field_names(common_pb2.Lineage))
    assert names == set(Lineage.model_fields) == {f.name for f in dataclasses.fields(t.Lineage)}


@pytest.mark.parametrize("kind", ["best", "latest", ""])
def test_lineage_round_trips_from_the_core_to_the_client(kind: str) -> None:
    core = Lineage(job_id="j1" if kind else "", kind=kind, weights_sha256="ab" * 32, corpus_id="c1",
                   corpus_name="shakespeare", corpus_sha256="cd" * 32, step=1200)
    message = lineage_proto(core)
    assert message.kind == CHECKPOINT_KINDS[kind]
    assert from_proto.lineage(message) == t.Lineage(**core.model_dump())
    assert lineage_values(message) == core.model_dump()


def test_an_object_missing_a_proto_field_is_refused() -> None:
    @dataclass
    class Partial:
        n_layer: int = 1

    with pytest.raises(AttributeError, match="n_head"):
        model_config_proto(Partial())
