"""Constrained generation: a regex, choices or JSON schema compiled into an automaton over a model's characters.

outlines-core builds the deterministic automaton of a regular expression over a token vocabulary; with one
character per token it is the character automaton, so each state's allowed characters are an exact mask (no
token-boundary approximation). Its automaton is a leftmost-first search's, which loses full matches that extend a
shorter one by two or more characters (`yes(?: sir)?` gave only "yes"); so the pattern is compiled followed by an
end marker, a character outside the vocabulary, and a state accepts exactly where the marker may follow: the
automaton of the full match, with no match state inside it. The transition table becomes tensors once per
(constraint, vocabulary), so a decode step masks every constrained row with one gather and advances each by a dict
lookup, without calling the library. JSON schemas become regexes through outlines-core's own conversion.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass

import torch
from outlines_core import Index, Vocabulary
from outlines_core.json_schema import build_regex_from_schema

from chargpt.errors import InvalidArgumentError
from chargpt.sampling_params import SamplingParams
from inference_service.json_schema_support import check_supported

# Between a JSON document's tokens: at most one space. A character model given free whitespace (newlines, runs of
# spaces) can drift into it for the whole length limit; one optional space keeps documents compact and readable.
JSON_WHITESPACE = r"[ ]?"
REGEX_SYNTAX = "\\^$.|?*+()[]{}-"
MAX_STATES = 20_000  # a (states x 2 vocabulary) table beyond this is a pathological pattern, not a format


@dataclass(frozen=True)
class Automaton:
    """A deterministic automaton over the model's character ids in which every state is live (a full match is
    reachable from it): state 0 is the start."""

    # (S, 2V+1) float32, additive: 0 where a state allows a character and -inf where it forbids one (columns
    # 0..V-1), the complement (V..2V-1: the characters ending stands for), then 0 where ending is an option (2V)
    table: torch.Tensor
    transitions: tuple[dict[int, int], ...]  # state -> character id -> next state
    can_end: tuple[bool, ...]  # accepting and able to continue: ending is an option, sampled with the characters
    complete: tuple[bool, ...]  # accepting and unable to continue: the text is finished


class ConstraintState:
    """Where one sample is in its automaton (engine thread only)."""

    __slots__ = ("automaton", "state")

    def __init__(self, automaton: Automaton) -> None:
        self.automaton, self.state = automaton, 0

    def advance(self, token: int) -> bool:
        """Take the sampled (allowed) character; True when the text is now complete and cannot continue."""
        self.state = self.automaton.transitions[self.state][token]
        return self.automaton.complete[self.state]


def compile_constraint(params: SamplingParams, vocabulary: str) -> Automaton | None:
    """The request's constraint over `vocabulary` (None: free text), cached per (constraint, vocabulary);
    INVALID_ARGUMENT naming the field when it cannot be compiled or no text of these characters satisfies it."""
    constraint = params.constraint
    if constraint is None:
        return None
    field, value = constraint
    return _compiled(field, value, vocabulary)


@functools.lru_cache(maxsize=256)
def _compiled(field: str, value: str | tuple[str, ...], vocabulary: str) -> Automaton:
    pattern = _pattern(field, value, vocabulary)
    marker = _end_marker(vocabulary)
    try:
        index = Index(f"(?:{pattern})\\x{{{ord(marker):x}}}", _vocabulary(vocabulary + marker))
    except ValueError as exc:
        raise InvalidArgumentError(field, _index_error(str(exc), pattern, vocabulary)) from None
    return _automaton(index, len(vocabulary), field)


def _end_marker(vocabulary: str) -> str:
    """A private-use character the model does not have, to mark where a full match ends."""
    return next(chr(c) for c in range(0xE000, 0xF900) if chr(c) not in vocabulary)


def _pattern(field: str, value: str | tuple[str, ...], vocabulary: str) -> str:
    """The regular expression of a constraint: a regex as given, choices as an alternation of literals, a JSON
    schema by outlines-core's conversion."""
    if isinstance(value, tuple):  # choices
        unknown = sorted(set("".join(value)) - set(vocabulary))
        if unknown:
            raise InvalidArgumentError(field, f"the model has never seen {_chars(unknown)}, so no choice holding "
                                       "it can be generated")
        return "(?:" + "|".join("".join(f"\\x{{{ord(c):x}}}" for c in choice) for choice in value) + ")"
    if field == "json_schema":
        check_supported(value, field)
        try:
            return str(build_regex_from_schema(value, JSON_WHITESPACE))
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise InvalidArgumentError(field, f"cannot be compiled: {exc}") from None
    return value


@functools.lru_cache(maxsize=16)
def _vocabulary(vocabulary: str) -> Vocabulary:
    """outlines-core's vocabulary of single characters (the model's and the end marker); its end-of-sequence id is
    one past the last."""
    return Vocabulary(len(vocabulary), {char: [i] for i, char in enumerate(vocabulary)})


def _index_error(message: str, pattern: str, vocabulary: str) -> str:
    """outlines-core's error as the client should read it: the characters the model lacks, or the pattern's fault."""
    missing = re.search(r"following characters: (\[.*?\])", message)
    if missing:  # it names bytes for characters beyond ASCII: then name the pattern's characters the model lacks
        chars = [c for c in json.loads(missing.group(1)) if len(c) == 1 and c.isprintable() and ord(c) < 128]
        chars = chars or sorted(set(pattern) - set(vocabulary) - set(REGEX_SYNTAX))
        return (f"needs a character the model has never seen ({_chars(chars)}) where the pattern has no other way "
                "on, so no text of the model's characters matches it")
    if "anchored" in message:
        return ("cannot be compiled: anchors (^, $, \\A, \\z) are not supported, nor needed: the whole text must "
                f"match the pattern ({message})")
    if "building NFA" in message or "building DFA" in message:
        return (f"cannot be compiled: {message} (the Rust regex syntax without look-around or backreferences: "
                "is every group closed?)")
    return f"cannot be compiled: {message}"


def _chars(chars: list[str]) -> str:
    shown = ", ".join(repr(c) for c in chars[:10])
    return shown + (f" and {len(chars) - 10} more" if len(chars) > 10 else "") if chars else "some characters"


def _automaton(index: Index, vocab: int, field: str) -> Automaton:
    """The index's live states (those from which a full match is reachable) renumbered from the start state, and
    their tensors; a state accepts where the end marker (id `vocab`) leads to a final state. An empty language, or
    one holding only the empty text, is INVALID_ARGUMENT."""
    table: dict[int, dict[int, int]] = index.get_transitions()
    final = set(index.get_final_states())
    ends = {s for s, out in table.items() if out.get(vocab) in final}
    edges = {s: {t: n for t, n in out.items() if t < vocab} for s, out in table.items()}  # characters only
    live = _co_reachable(edges, ends)
    start = index.get_initial_state()
    if start not in live:
        raise InvalidArgumentError(field, "no text made of the model's characters satisfies it")
    order = _reachable(start, edges, live)
    if len(order) > MAX_STATES:
        raise InvalidArgumentError(field, f"compiles to {len(order):,} states; the limit is {MAX_STATES:,}")
    number = {s: i for i, s in enumerate(order)}
    transitions = tuple({t: number[n] for t, n in edges.get(s, {}).items() if n in live} for s in order)
    if start in ends and not transitions[0]:
        raise InvalidArgumentError(field, "only the empty text satisfies it")
    accepting = [(s in ends, bool(out)) for s, out in zip(order, transitions, strict=True)]
    can_end = tuple(a and goes_on for a, goes_on in accepting)
    allowed = torch.zeros(len(order), vocab, dtype=torch.bool)
    for i, out in enumerate(transitions):
        allowed[i, list(out)] = True
    kept = torch.cat([allowed, ~allowed, torch.tensor(can_end)[:, None]], dim=1)
    return Automaton(torch.zeros(kept.shape).masked_fill_(~kept, -math.inf), transitions, can_end,
                     tuple(a and not goes_on for a, goes_on in accepting))


def _reachable(start: int, edges: dict[int, dict[int, int]], live: set[int]) -> list[int]:
    """The live states reachable from `start` through live ones, in breadth-first order (start first)."""
    order, seen = [start], {start}
    for state in order:  # grows while it is walked
        for target in edges.get(state, {}).values():
            if target in live and target not in seen:
                seen.add(target)
                order.append(target)
    return order


def _co_reachable(edges: dict[int, dict[int, int]], final: set[int]) -> set[int]:
    """The states from which a final state can be reached."""
    reverse: dict[int, set[int]] = {}
    for state, out in edges.items():
        for target in out.values():
            reverse.setdefault(target, set()).add(state)
    live, frontier = set(final), list(final)
    while frontier:
        for source in reverse.get(frontier.pop(), ()):
            if source not in live:
                live.add(source)
                frontier.append(source)
    return live


class BatchConstraints:
    """A batch's constrained rows, built when its membership changes: their automata's tables stacked into one (a
    copy only when the rows hold several automata), so a step gathers every row's mask with one index_select
    whatever mix of constraints the rows have."""

    def __init__(self, states: list[ConstraintState], rows: list[int], batch_size: int) -> None:
        automata = list({id(s.automaton): s.automaton for s in states}.values())
        starts, offset = {}, 0
        for automaton in automata:
            starts[id(automaton)], offset = offset, offset + automaton.table.shape[0]
        self.states, self.rows = states, torch.tensor(rows)
        self._offsets = [starts[id(s.automaton)] for s in states]
        self._table = automata[0].table if len(automata) == 1 else torch.cat([a.table for a in automata])
        self._every_row = len(rows) == batch_size  # then no gathering and scattering of rows

    def apply(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 host logits (B, V) with the characters each constrained row's state forbids at -inf, and the end
        option's logits (B, 1): where a constraint is complete but could continue, the log of the model's
        probability mass on the characters it forbids (what the model would write if the text went on otherwise),
        else -inf. Other rows are unchanged (and cannot end). The masks are added, not filled in, so a row whose
        logits hold NaN or +inf still does (NaN + -inf is NaN, +inf + -inf too) for the sampler to report."""
        logits = logits.float().cpu()
        vocab = logits.shape[1]
        at = torch.tensor([offset + s.state for offset, s in zip(self._offsets, self.states, strict=True)])
        table = self._table.index_select(0, at)  # (C, 2V+1)
        raw = logits if self._every_row else logits.index_select(0, self.rows)  # (C, V)
        masked = raw + table[:, :vocab]
        ends = torch.logsumexp(raw + table[:, vocab:2 * vocab], dim=-1, keepdim=True) + table[:, 2 * vocab:]
        if self._every_row:
            return masked, ends
        end = torch.full((logits.shape[0], 1), -math.inf).index_copy_(0, self.rows, ends)
        return logits.index_copy(0, self.rows, masked), end
