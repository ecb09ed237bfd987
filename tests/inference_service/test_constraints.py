"""Constrained generation at the character level: the engine's output processor (the real sampler, masks and
automata) driven by random logits, held to Python's regex engines and to jsonschema."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import jsonschema
import pytest
import regex as partial_regex
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chargpt.errors import InvalidArgumentError
from chargpt.sampling_params import SamplingParams, resolve_sampling
from inference_service.constraints import ConstraintState, compile_constraint
from inference_service.engine.model_metrics import ModelMetrics
from inference_service.engine.output_processor import OutputProcessor
from inference_service.engine.outputs import ModelRunnerOutput, SchedulerOutput
from inference_service.engine.request import Finish, GenRequest, Summary
from inference_service.metrics import InferenceMetrics

from .conftest import VOCAB as TEST_VOCAB

VOCAB = "".join(sorted(TEST_VOCAB))
JSON_VOCAB = "".join(sorted(set(VOCAB + '{}[]"0123456789-_')))
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def generate(vocabulary: str, rows: list[tuple[SamplingParams, int]], steps_seed: int = 0) -> list[tuple[str, Finish]]:
    """Each (params, seed) row generated in one batch through the engine's OutputProcessor, each row's logits drawn
    from its own random stream (so a row's logits do not depend on the batch): its text and finish reason."""
    loop = asyncio.new_event_loop()  # never run: the processor only schedules deliveries on it
    processor = OutputProcessor(vocabulary, ModelMetrics(InferenceMetrics(), "t"))
    requests = []
    for params, seed in rows:
        automaton = compile_constraint(params, vocabulary)
        bias = tuple((vocabulary.index(char), value) for char, value in params.logit_bias.items())
        requests.append(GenRequest(prompt_ids=[0], prompt_chars_dropped=0, params=params, seed=seed, deadline=None,
                                   loop=loop, logit_bias=bias,
                                   constraint=ConstraintState(automaton) if automaton else None))
    streams = {id(r): torch.Generator().manual_seed(steps_seed * 1000 + seed)
               for r, (_, seed) in zip(requests, rows, strict=True)}
    active, changed = list(requests), True
    while active:
        logits = torch.stack([torch.randn(len(vocabulary), generator=streams[id(r)]) * 3 for r in active])
        done = processor.process(SchedulerOutput(active, active, [], [], [], changed), ModelRunnerOutput(logits))
        changed = bool(done.rows)
        active = [r for i, r in enumerate(active) if i not in done.rows]
    finishes = {id(r): e.finish for r, e in processor._outbox if isinstance(e, Summary)}
    loop.close()
    return [("".join(vocabulary[t] for t in r.history), finishes[id(r)]) for r in requests]


ATOMS = st.sampled_from(["a", "b", "c", " ", "[ab]", "[^a]", "[a-c]", "A"])
REGEXES = st.recursive(ATOMS, lambda inner: st.one_of(
    st.tuples(inner, inner).map("".join),
    st.tuples(inner, inner).map(lambda t: f"(?:{t[0]}|{t[1]})"),
    st.tuples(inner, st.sampled_from(["*", "+", "?", "{2}", "{0,2}", "{1,3}"])).map(lambda t: f"(?:{t[0]}){t[1]}"),
), max_leaves=6)


@SETTINGS
@given(pattern=REGEXES, seed=st.integers(0, 2**32), temperature=st.sampled_from([0.0, 0.7, 1.0, 1.5]),
       top_k=st.sampled_from([0, 1, 3]), max_new_tokens=st.integers(1, 12))
def test_random_regexes_finish_as_full_matches_or_stop_at_a_viable_prefix(pattern: str, seed: int, temperature: float,
                                                                         top_k: int, max_new_tokens: int) -> None:
    params = SamplingParams(regex=pattern, temperature=temperature, top_k=top_k, max_new_tokens=max_new_tokens)
    try:
        [(text, finish)] = generate(VOCAB, [(params, seed)])
    except InvalidArgumentError as exc:  # only for a language of the empty text alone
        assert "only the empty text" in str(exc) and re.fullmatch(pattern, "") is not None
        assume(False)
        return
    if finish is Finish.STOP:
        assert re.fullmatch(pattern, text), (pattern, text)
    else:
        assert finish is Finish.LENGTH and len(text) == max_new_tokens
        assert partial_regex.fullmatch(pattern, text, partial=True), (pattern, text)


@SETTINGS
@given(choices=st.lists(st.text(alphabet="ab c", min_size=1, max_size=5), min_size=1, max_size=6),
       seed=st.integers(0, 2**32), temperature=st.sampled_from([0.0, 1.0, 2.0]))
def test_choices_always_yield_one_of_them(choices: list[str], seed: int, temperature: float) -> None:
    params = SamplingParams(choices=tuple(choices), temperature=temperature, max_new_tokens=8)
    [(text, finish)] = generate(VOCAB, [(params, seed)])
    assert finish is Finish.STOP and text in choices


def test_every_choice_is_reachable_even_one_extending_another_by_several_characters() -> None:
    params = SamplingParams(choices=("yes", "no", "yes sir"), max_new_tokens=10)
    texts = {generate(VOCAB, [(params, seed)])[0][0] for seed in range(40)}
    # With the space favoured (logit_bias applies within the allowed set, after ending was weighed on the model's
    # own logits), "yes" goes on to "yes sir".
    favoured = params.model_copy(update={"logit_bias": {" ": 100.0}})
    texts |= {generate(VOCAB, [(favoured, seed)])[0][0] for seed in range(40)}
    assert texts == {"yes", "no", "yes sir"}


SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer"}},
     "required": ["name", "age"]},
    {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    {"type": "object", "properties": {"kind": {"enum": ["cat", "dog", "catfish"]},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 3},
                                               "maxItems": 2}},
     "required": ["kind"]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_json_outputs_parse_and_validate(schema: dict[str, Any]) -> None:
    params = SamplingParams(json_schema=json.dumps(schema), max_new_tokens=400)
    results = generate(JSON_VOCAB, [(params, seed) for seed in range(24)])
    for text, finish in results:
        assert finish is Finish.STOP, text
        jsonschema.validate(json.loads(text), schema)


def test_a_mixed_batch_gives_each_row_its_solo_result() -> None:
    rows = [(SamplingParams(regex="[A-Z][a-z ]*:\n[a-z ]*", temperature=0.9, max_new_tokens=30), 1),
            (SamplingParams(temperature=1.2, top_k=5, max_new_tokens=20), 2),
            (SamplingParams(choices=("yes", "no", "maybe"), max_new_tokens=9), 3),
            (SamplingParams(regex="[ab]+c?", temperature=0.5, top_p=0.8, repetition_penalty=1.3, min_p=0.05,
                            max_new_tokens=25), 4),
            (SamplingParams(temperature=0.0, max_new_tokens=15), 5)]
    batched = generate(VOCAB, rows)
    assert batched == [generate(VOCAB, [row])[0] for row in rows]
    assert batched[2][0] in ("yes", "no", "maybe")


def test_ending_is_weighed_against_going_on() -> None:
    """Greedy `a+`: the end option carries the mass of every character but 'a', so greedy ends at once when the
    model prefers anything else, and never while 'a' outweighs everything else together."""
    processor_vocab = "ab"
    params = SamplingParams(regex="a+", temperature=0.0, max_new_tokens=5)
    loop = asyncio.new_event_loop()
    processor = OutputProcessor(processor_vocab, ModelMetrics(InferenceMetrics(), "t"))
    automaton = compile_constraint(params, processor_vocab)
    assert automaton is not None
    request = GenRequest(prompt_ids=[0], prompt_chars_dropped=0, params=params, seed=0, deadline=None, loop=loop,
                         constraint=ConstraintState(automaton))
    rows: list[GenRequest] = [request]
    for step, logits in enumerate([[0.0, 5.0], [3.0, 0.0], [0.0, 1.0]]):  # 'a' is forced, then wins, then loses
        done = processor.process(SchedulerOutput(rows, rows, [], [], [], step == 0), ModelRunnerOutput(
            torch.tensor([logits])))
    assert request.history == [0, 0] and done.rows == [0]
    assert [e.finish for _, e in processor._outbox if isinstance(e, Summary)] == [Finish.STOP]
    loop.close()


@pytest.mark.parametrize(("values", "field", "reason"), [
    ({"choices": ("yes", "né")}, "choices", "never seen 'é'"),
    ({"regex": "é+"}, "regex", "never seen ('é')"),
    ({"regex": "(?:ab)*1"}, "regex", "no text made of the model's characters"),
    ({"regex": "a{0}"}, "regex", "only the empty text"),
    ({"regex": "a("}, "regex", "cannot be compiled"),
    ({"regex": "^ab$"}, "regex", "anchors (^, $, \\A, \\z) are not supported, nor needed"),
    ({"regex": "(a)\\1"}, "regex", "without look-around or backreferences"),
    ({"json_schema": '{"type": "object"}'}, "json_schema", "never seen ('{')"),
    ({"json_schema": '{"type": "wat"}'}, "json_schema", "cannot be compiled"),
])
def test_constraints_the_vocabulary_cannot_satisfy_are_invalid(values: dict[str, Any], field: str,
                                                              reason: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        compile_constraint(SamplingParams(**values), VOCAB)
    assert info.value.field == field and reason in str(info.value)


def test_two_constraints_are_refused_naming_the_second() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        resolve_sampling(regex="a", choices=["a"])
    assert info.value.field == "choices"


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("regex", "", "at least 1 character"), ("regex", "a" * 4097, "at most 4096"),
    ("choices", [""], "1-256 characters"), ("choices", ["a" * 257], "1-256 characters"),
    ("choices", ["a"] * 257, "at most 256"), ("json_schema", "nope", "is not JSON"),
    ("json_schema", "[1]", "must be a JSON object"),
])
def test_constraint_fields_have_bounds(field: str, value: object, reason: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        resolve_sampling(**{field: value})
    assert info.value.field == field and reason in str(info.value)


def test_a_schema_given_as_an_object_is_its_json_text_in_order() -> None:
    schema = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "integer"}}}
    assert SamplingParams(json_schema=schema).json_schema == json.dumps(schema)  # type: ignore[arg-type]
    assert SamplingParams(json_schema=schema).constraint == ("json_schema", json.dumps(schema))  # type: ignore[arg-type]


@pytest.mark.parametrize(("schema", "reason"), [
    ({"type": "integer", "minimum": 5, "maximum": 7}, "'minimum' at #"),
    ({"type": "array", "items": {"enum": [1, 2]}, "uniqueItems": True}, "'uniqueItems' at #"),
    ({"type": "object", "properties": {"n": {"type": "number", "multipleOf": 2}}}, "'multipleOf' at #/properties/n"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "'oneOf' at #"),
    ({"$defs": {"x": {"not": {"type": "null"}}}, "$ref": "#/$defs/x"}, "'not' at #/$defs/x"),
    ({"type": "array", "prefixItems": [{"type": "integer", "exclusiveMaximum": 3}]}, "'exclusiveMaximum'"),
])
def test_schema_keywords_generation_would_not_hold_to_are_refused(schema: dict[str, Any], reason: str) -> None:
    """outlines-core's conversion drops these silently: `minimum` 5 would let "666" end as a finished text."""
    with pytest.raises(InvalidArgumentError) as info:
        compile_constraint(SamplingParams(json_schema=json.dumps(schema)), JSON_VOCAB)
    assert info.value.field == "json_schema" and reason in str(info.value) and "not supported" in str(info.value)


def test_a_property_named_like_a_keyword_is_only_a_name() -> None:
    schema = {"type": "object", "properties": {"minimum": {"type": "integer"}}, "required": ["minimum"]}
    assert compile_constraint(SamplingParams(json_schema=json.dumps(schema)), JSON_VOCAB) is not None
