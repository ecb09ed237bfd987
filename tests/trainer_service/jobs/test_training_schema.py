"""One schema for the training fields: every TrainingSpec field reaches the plan, the client options and the CLI."""

from __future__ import annotations

import argparse
import typing

import pytest
from chargpt_client.cli import build_parser
from chargpt_client.ops import training_spec
from chargpt_client.training import TrainingOptions, option_fields

from chargpt.core.config import ModelConfig
from chargpt.core.device import SIZE_PROFILES
from chargpt.errors import InvalidArgumentError, validated
from chargpt.v1 import trainer_pb2
from trainer_service.jobs.plan import DeviceProber, build_plan
from trainer_service.jobs.request import JobRequest
from trainer_service.messages import enum_choices, job_request, training_fields, training_proto
from trainer_service.store_records import CorpusRecord
from trainer_service.training.api import TrainingPlan
from trainer_service.training.defaults import training_defaults

SPEC = trainer_pb2.TrainingSpec.DESCRIPTOR
NOT_TRAINING = {"job_id", "model", "device", "num_processes", "num_nodes", "init_from",  # from elsewhere in the request
                "fit_to_budget",  # derived from which fields the request set
                "tensorboard_run"}  # and from the server's settings
MODEL = ModelConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=16, block_size=16)


def _train_flags() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {option: action for action in sub.choices["train"]._actions for option in action.option_strings}


def _literal(annotation: object) -> set[str]:
    """The names of a Literal[...] or Literal[...] | None annotation."""
    if typing.get_origin(annotation) is not typing.Literal:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return set(typing.get_args(annotation))


@pytest.mark.parametrize("name", [f.name for f in SPEC.fields])
def test_every_training_spec_field_is_in_the_plan_the_client_and_the_cli(name: str) -> None:
    fd = SPEC.fields_by_name[name]
    assert name in TrainingPlan.model_fields, f"TrainingPlan lacks {name}"
    assert name in TrainingOptions.model_fields, f"chargpt_client TrainingOptions lacks {name}"
    flag = "--" + name.replace("_", "-")
    flags = _train_flags()
    assert flag in flags, f"`chargpt train` lacks {flag}"
    if fd.enum_type is not None:  # the same names everywhere: proto enum, plan, client, CLI choices
        names = set(enum_choices(fd.enum_type).values())
        assert _literal(TrainingPlan.model_fields[name].annotation) == names
        assert _literal(TrainingOptions.model_fields[name].annotation) == names
        assert set(flags[flag].choices or ()) == names
    else:
        assert fd.has_presence, f"TrainingSpec.{name} must be optional so that an explicit 0 is not 'unset'"


def test_no_field_exists_only_on_one_side() -> None:
    spec = {f.name for f in SPEC.fields}
    assert set(TrainingPlan.model_fields) - NOT_TRAINING == spec
    assert set(TrainingOptions.model_fields) == spec


def test_plan_to_proto_and_back_is_exact() -> None:
    plan = TrainingPlan(job_id="j", model=MODEL, max_steps=100, batch_size=8, learning_rate=1e-3, warmup_steps=0,
                        weight_decay=0.0, grad_clip=0.0, eval_interval=0, seed=0, precision="fp32",
                        lr_schedule="linear", compile="off", max_seconds=60.0)
    spec = training_proto(plan)
    assert all(spec.HasField(f.name) for f in SPEC.fields if f.has_presence)
    values = training_fields(spec)
    assert values == {name: getattr(plan, name) for name in values} and len(values) == len(SPEC.fields)
    assert values["weight_decay"] == 0.0 and values["eval_interval"] == 0  # zeros survive both ways


def test_client_options_reach_the_plan_unchanged() -> None:
    options = TrainingOptions(max_steps=50, batch_size=4, learning_rate=2e-3, precision="bf16", weight_decay=0.0,
                              grad_clip=0.25, grad_accumulation_steps=2, lr_schedule="constant")
    assert training_fields(training_spec(options)) == options.given()


def test_derived_defaults_come_from_the_schema() -> None:
    plan = TrainingPlan(job_id="j", model=MODEL, max_steps=95, batch_size=8, learning_rate=1e-3, warmup_steps=5)
    assert plan.min_learning_rate == pytest.approx(1e-4)
    assert plan.eval_interval == plan.sample_interval == plan.checkpoint_interval == 9
    assert (plan.weight_decay, plan.grad_clip, plan.sample_length, plan.seed) == (0.1, 1.0, 200, 1337)


@pytest.mark.parametrize(("values", "field"), [
    ({"max_steps": 0}, "training.max_steps"),
    ({"learning_rate": float("nan")}, "training.learning_rate"),
    ({"min_learning_rate": 1.0}, "training.min_learning_rate"),
    ({"warmup_steps": 101}, "training.warmup_steps"),
    ({"num_processes": 0}, "resources.num_processes"),
    ({"batch_size": 6, "num_processes": 4}, "training.batch_size"),
    ({"grad_accumulation_steps": 0}, "training.grad_accumulation_steps"),
])
def test_validation_errors_name_the_proto_field(values: dict[str, object], field: str) -> None:
    base = {"job_id": "j", "model": MODEL, "max_steps": 100, "batch_size": 8, "learning_rate": 1e-3,
            "warmup_steps": 0}
    with pytest.raises(InvalidArgumentError) as info:
        validated(TrainingPlan, {**base, **values}, lambda name: ("resources." if name == "num_processes"
                                                                  else "training.") + name)
    assert info.value.field == field and "(got " in str(info.value)


def test_model_errors_name_the_custom_field() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        validated(ModelConfig, {"vocab_size": 20, "n_layer": 1, "n_head": 3, "n_embd": 16, "block_size": 16},
                  lambda name: f"model.custom.{name}")
    assert info.value.field == "model.custom.n_head" and "divide n_embd" in str(info.value)


def test_the_trainer_and_a_hand_written_plan_derive_defaults_alike() -> None:
    """One derivation (training_defaults): the size profile's values and LR floor, the warmup and intervals
    from the run length, and a budget's unset fields left to the budget."""
    cpu, tiny = SIZE_PROFILES["cpu"], SIZE_PROFILES["tiny"]
    assert training_defaults({}, cpu)["min_learning_rate"] == 0.0  # the CPU profile decays to zero
    values = training_defaults({"max_steps": 300}, tiny)
    assert values["min_learning_rate"] == pytest.approx(tiny.learning_rate / 10) and values["warmup_steps"] == 30
    assert values["eval_interval"] == values["sample_interval"] == values["checkpoint_interval"] == 30
    assert training_defaults({"max_steps": 300}, tiny, finetune=True)["warmup_steps"] == 300 // 50
    budget = training_defaults({"max_seconds": 60.0, "eval_interval": 0}, tiny)
    assert budget["max_steps"] is None and budget["warmup_steps"] == tiny.warmup_steps  # no step limit
    assert budget["fit_to_budget"] == ("warmup_steps", "sample_interval", "checkpoint_interval")
    assert (budget["eval_interval"], budget["sample_interval"], budget["checkpoint_interval"]) == (0, None, None)
    plan = TrainingPlan.model_validate({**budget, "job_id": "j", "model": MODEL})
    assert plan.max_steps is None and plan.sample_interval is None and plan.fit_to_budget == budget["fit_to_budget"]
    hand = TrainingPlan(job_id="j", model=MODEL, max_steps=None, max_seconds=60.0, batch_size=8, learning_rate=1e-3,
                        warmup_steps=5)
    assert hand.fit_to_budget == ("eval_interval", "sample_interval", "checkpoint_interval")
    assert hand.model_dump() == TrainingPlan.model_validate(hand.model_dump()).model_dump()  # stable round trip


def test_a_plan_needs_an_end() -> None:
    with pytest.raises(ValueError, match="max_steps or max_seconds"):
        TrainingPlan(job_id="j", model=MODEL, max_steps=None, batch_size=8, learning_rate=1e-3, warmup_steps=0)
    with pytest.raises(ValueError, match="fitted to a time budget"):
        TrainingPlan(job_id="j", model=MODEL, max_steps=10, batch_size=8, learning_rate=1e-3, warmup_steps=0,
                     eval_interval=None)


def test_a_training_field_goes_from_the_cli_flag_to_the_plan_through_one_adapter_call() -> None:
    """`chargpt train --learning-rate` -> TrainingOptions -> TrainingSpec on the wire -> messages.job_request (the
    servicer's one conversion) -> JobRequest -> build_plan -> the TrainingPlan the worker hands to the loop."""
    args = build_parser().parse_args(["train", "c", "--learning-rate", "0.002", "--max-steps", "7",
                                      "--lr-schedule", "linear"])
    options = TrainingOptions(**{o.name: getattr(args, o.name) for o in option_fields()})
    wire = trainer_pb2.CreateTrainingJobRequest(corpus_id="c", training=training_spec(options),
                                                resources=trainer_pb2.ResourceSpec(device="cpu"))
    request = job_request(wire)
    assert request == JobRequest(corpus_id="c", device="cpu", training={
        "learning_rate": 0.002, "max_steps": 7, "lr_schedule": "linear"})
    corpus = CorpusRecord(corpus_id="c", name="c", description="", size_bytes=2000, num_chars=2000,
                          vocabulary="abc", train_chars=1800, val_chars=200, builtin=False, created=0.0, path="")
    plan = build_plan("j", request, corpus, DeviceProber("cpu"), max_processes=1)
    assert (plan.learning_rate, plan.max_steps, plan.lr_schedule) == (0.002, 7, "linear")
