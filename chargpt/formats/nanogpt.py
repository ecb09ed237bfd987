"""nanoGPT's character-level checkpoints (ckpt.pt + meta.pkl) in chargpt's names, without running pickled code.

The trainer loads ckpt.pt with torch.load(weights_only=True) and hands its tensors here as numpy arrays; meta.pkl
is read with an unpickler that builds plain dicts, lists, strings and numbers only and refuses every global, so a
pickle that would call anything (os.system through __reduce__, say) is an error before any of it runs.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from chargpt.errors import InvalidArgumentError
from chargpt.formats import NANOGPT_CKPT as CKPT_FILE
from chargpt.formats import NANOGPT_META as META_FILE
from chargpt.formats.imported import ImportedModel, architecture, checked_model, not_a_character_model

COMPILED_PREFIX = "_orig_mod."  # torch.compile's wrapper: a compiled model's state dict names start with it
ARCH_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


class PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings and numbers; any class or function a pickle names is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it names {module}.{name}; only plain dicts, lists, strings and numbers "
                                     "are accepted")


def read_meta(data: bytes) -> str:
    """The vocabulary in id order from meta.pkl's `itos` (checked against `stoi` and `vocab_size`)."""
    try:
        meta = PlainUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # truncated or hostile: whatever the unpickler raised, nothing ran
        raise InvalidArgumentError(META_FILE, f"not a plain pickle of the vocabulary: {exc}") from None
    itos = meta.get("itos") if isinstance(meta, dict) else None
    if not isinstance(itos, dict) or not itos:
        raise InvalidArgumentError(f"{META_FILE}: itos", "must be a dict from token id to character")
    if sorted(itos) != list(range(len(itos))) or any(not isinstance(c, str) or len(c) != 1 for c in itos.values()):
        raise InvalidArgumentError(f"{META_FILE}: itos", "must map the ids 0..n-1 to single characters "
                                   "(a character-level vocabulary)")
    vocabulary = "".join(itos[i] for i in range(len(itos)))
    stoi = meta.get("stoi")
    if stoi is not None and stoi != {c: i for i, c in enumerate(vocabulary)}:
        raise InvalidArgumentError(f"{META_FILE}: stoi", "does not invert itos")
    if meta.get("vocab_size", len(vocabulary)) != len(vocabulary):
        raise InvalidArgumentError(f"{META_FILE}: vocab_size", f"is {meta.get('vocab_size')!r} but itos has "
                                   f"{len(vocabulary)} characters")
    return vocabulary


def from_nanogpt(checkpoint: Mapping[str, Any], vocabulary: str | None) -> ImportedModel:
    """ckpt.pt's contents (its `model` tensors as numpy arrays) with meta.pkl's vocabulary, as chargpt's model."""
    args = checkpoint.get("model_args")
    if not isinstance(args, Mapping):
        raise InvalidArgumentError(f"{CKPT_FILE}: model_args", "missing: not a nanoGPT checkpoint")
    state = checkpoint.get("model")
    if not isinstance(state, Mapping) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise InvalidArgumentError(f"{CKPT_FILE}: model", "missing, or not a state dict of tensors")
    arch = architecture({name: args.get(name) for name in ARCH_FIELDS}, f"{CKPT_FILE}: model_args.")
    if vocabulary is None:
        if arch.vocab_size > 50_000:
            raise not_a_character_model(arch.vocab_size, f"{CKPT_FILE}: model_args.vocab_size")
        raise InvalidArgumentError(META_FILE, "required: nanoGPT keeps a character model's vocabulary in "
                                   "meta.pkl (data/<dataset>/meta.pkl)")
    tensors = chargpt_names(state)
    step = checkpoint.get("iter_num", 0)
    best = checkpoint.get("best_val_loss")
    return checked_model(arch, vocabulary, tensors, CKPT_FILE, step=step if isinstance(step, int) else 0,
                         val_loss=float(best) if isinstance(best, int | float) and np.isfinite(best) else None)


def chargpt_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """nanoGPT's state-dict names to chargpt's: no compile prefix, no `transformer.`, blocks for h, no causal-mask
    buffer (attn.bias, kept by nanoGPT without flash attention), and the tied lm_head stored once (as wte)."""
    tensors, head = {}, None
    for name, value in state.items():
        name = name.removeprefix(COMPILED_PREFIX).removeprefix("transformer.")
        if name == "lm_head.weight":
            head = value
        elif not (name.startswith("h.") and name.endswith(".attn.bias")):
            tensors["blocks." + name[2:] if name.startswith("h.") else name] = value
    wte = tensors.get("wte.weight")
    if head is not None and wte is not None and not np.array_equal(head, wte):
        raise InvalidArgumentError(f"{CKPT_FILE}: model.lm_head.weight", "differs from transformer.wte.weight; "
                                   "chargpt's head is tied to the embedding, as nanoGPT's is")
    return tensors

