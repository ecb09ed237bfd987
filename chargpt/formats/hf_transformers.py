"""Hugging Face transformers: export to (and import from) a GPT2LMHeadModel directory with a character-level
tokenizer, without torch."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from chargpt.errors import InvalidArgumentError
from chargpt.formats.checkpoint_dir import END_OF_TEXT, LAYER_NORM_EPS, Architecture, CharCheckpoint
from chargpt.formats.imported import GPT2_VOCAB_SIZES, ImportedModel, architecture, checked_model, not_a_character_model
from chargpt.formats.model_card import write_model_card
from chargpt.sampling_params import SAMPLING_PRESETS, SamplingPreset

BALANCED = SAMPLING_PRESETS[SamplingPreset.BALANCED]  # the notebook's balanced setting: the export's default

# chargpt's MLP uses nn.GELU() (the exact erf form): transformers' "gelu"; "gelu_new" would be GPT-2's tanh form.
ACTIVATION = "gelu"
# Every character on its own: [\s\S] matches any one code point, newline included ("." would skip "\n").
ONE_CHARACTER = r"[\s\S]"
LINEAR_NAMES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def export_hf(checkpoint: CharCheckpoint, out: Path) -> None:
    """Write config.json, model.safetensors, the tokenizer, generation_config.json and README.md into `out`."""
    _write_json(out / "config.json", gpt2_config(checkpoint))
    save_file(gpt2_state_dict(checkpoint), str(out / "model.safetensors"), metadata={"format": "pt"})
    char_tokenizer(checkpoint.vocabulary).save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": checkpoint.arch.block_size,
        # the decoder already joins characters exactly; transformers' clean-up would eat the space before "," etc.
        "clean_up_tokenization_spaces": False,
        # CTranslate2's converter needs these named; chargpt's text never contains the token
        **{f"{kind}_token": END_OF_TEXT for kind in ("bos", "eos", "unk", "pad")},
    })
    eot = checkpoint.arch.vocab_size
    _write_json(out / "generation_config.json", {"do_sample": True, "temperature": BALANCED.temperature,
                                                 "top_k": BALANCED.top_k, "top_p": 1.0, "bos_token_id": eot,
                                                 "eos_token_id": eot, "pad_token_id": eot, "suppress_tokens": [eot]})
    write_model_card(checkpoint, out / "README.md", "hf")


def gpt2_config(checkpoint: CharCheckpoint) -> dict[str, Any]:
    a = checkpoint.arch
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": a.vocab_size + 1, "n_positions": a.block_size, "n_ctx": a.block_size,
        "n_embd": a.n_embd, "n_layer": a.n_layer, "n_head": a.n_head, "n_inner": 4 * a.n_embd,
        "activation_function": ACTIVATION, "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": a.dropout, "embd_pdrop": a.dropout, "attn_pdrop": a.dropout,
        "scale_attn_weights": True, "tie_word_embeddings": True, "torch_dtype": "float32", "dtype": "float32",
        **{f"{kind}_token_id": a.vocab_size for kind in ("bos", "eos", "pad")},  # END_OF_TEXT, after the characters
    }


def gpt2_state_dict(checkpoint: CharCheckpoint) -> dict[str, np.ndarray]:
    """chargpt's tensors under GPT-2's names; GPT-2's Conv1D stores Linear weights transposed, (in, out)."""
    state = {f"transformer.{name}": checkpoint.tensors[name] for name in ("wpe.weight", "ln_f.weight", "ln_f.bias")}
    state["transformer.wte.weight"] = checkpoint.embedding_with_end_of_text()
    for i in range(checkpoint.arch.n_layer):
        for name in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
            state[f"transformer.h.{i}.{name}"] = checkpoint.layer(i, name)
        for name in LINEAR_NAMES:
            state[f"transformer.h.{i}.{name}.weight"] = checkpoint.layer(i, f"{name}.weight").T
            state[f"transformer.h.{i}.{name}.bias"] = checkpoint.layer(i, f"{name}.bias")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


def char_tokenizer(vocabulary: str) -> Any:
    """A `tokenizers` Tokenizer with chargpt's ids: one token per character, joined back exactly on decode.

    A character outside the vocabulary makes encoding fail (WordLevel has no [UNK] token), as chargpt refuses it.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({c: i for i, c in enumerate(vocabulary)}, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(ONE_CHARACTER), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # concatenate: WordLevel's default would put spaces between tokens
    tokenizer.add_special_tokens([AddedToken(END_OF_TEXT, special=True)])  # id vocab_size, after the characters
    return tokenizer


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---- import: a GPT-2 directory with a character-level tokenizer, back to chargpt's weights

HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older transformers saved with the weights


def read_hf(directory: Path) -> ImportedModel:
    """The model in a GPT2LMHeadModel directory (config.json, model.safetensors, tokenizer.json).

    The tokens that are single characters must hold the first ids; tokens after them (an end-of-text token, as the
    export appends) are dropped with their embedding rows. Biases that are all zero mean bias=False (what the
    export writes for such a model), so import(export(x)) gives back x's weights bit for bit.
    """
    config = _read_json(directory / "config.json")
    characters, others = _token_ids(_read_json(directory / "tokenizer.json"))
    arch = _hf_architecture(config, len(characters))
    vocabulary = _characters(characters, others)
    try:
        state = load_file(str(directory / "model.safetensors"))
    except Exception as exc:  # safetensors raises its own error types for truncated headers
        raise InvalidArgumentError("model.safetensors", f"not a readable safetensors file: {exc}") from None
    tensors = _chargpt_tensors(state, arch.vocab_size)
    bias = any(v.any() for k, v in tensors.items() if k.endswith(".bias"))
    if not bias:
        tensors = {k: v for k, v in tensors.items() if not k.endswith(".bias")}
    return checked_model(replace(arch, bias=bias), vocabulary, tensors, "model.safetensors")


# What chargpt's model computes, against transformers' GPT2Config defaults for a field config.json leaves out.
HF_REQUIRED = {"activation_function": (ACTIVATION, "gelu_new", "chargpt's MLP uses the exact (erf) GELU"),
               "layer_norm_epsilon": (LAYER_NORM_EPS, LAYER_NORM_EPS, "chargpt's LayerNorm uses 1e-5"),
               "tie_word_embeddings": (True, True, "chargpt's head is tied to the embedding"),
               "scale_attn_weights": (True, True, "chargpt scales attention by 1/sqrt(head size)"),
               "scale_attn_by_inverse_layer_idx": (False, False, "chargpt does not scale attention by layer")}


def _hf_architecture(config: dict[str, Any], characters: int) -> Architecture:
    """config.json as chargpt's architecture; what chargpt's model cannot compute exactly is refused."""
    if config.get("model_type") != "gpt2":
        raise InvalidArgumentError("config.json: model_type", f"must be 'gpt2' (got {config.get('model_type')!r})")
    if config.get("vocab_size") in GPT2_VOCAB_SIZES:
        raise not_a_character_model(config["vocab_size"], "config.json: vocab_size")
    for name, (wanted, default, why) in HF_REQUIRED.items():
        if config.get(name, default) != wanted:
            raise InvalidArgumentError(f"config.json: {name}", f"is {config.get(name, default)!r}; {why} "
                                       f"({wanted!r})")
    n_embd, n_inner = config.get("n_embd"), config.get("n_inner")
    if n_inner is not None and (not isinstance(n_embd, int) or n_inner != 4 * n_embd):
        raise InvalidArgumentError("config.json: n_inner", f"is {n_inner!r}; chargpt's MLP is 4 x n_embd wide")
    values = {"vocab_size": characters, "block_size": config.get("n_positions"), "n_layer": config.get("n_layer"),
              "n_embd": n_embd, "n_head": config.get("n_head"), "dropout": config.get("resid_pdrop", 0.0)}
    return architecture(values, "config.json: ")


def _token_ids(tokenizer: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """(the single-character tokens, the special tokens) by id, from tokenizer.json; any other token is refused."""
    model = tokenizer.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(vocab, dict):
        raise InvalidArgumentError("tokenizer.json: model.vocab", "missing: not a tokenizers vocabulary")
    if len(vocab) in GPT2_VOCAB_SIZES:
        raise not_a_character_model(len(vocab), "tokenizer.json: model.vocab")
    added = [t for t in tokenizer.get("added_tokens") or () if isinstance(t, dict)]
    special = {str(t.get("content")): int(t.get("id", -1)) for t in added if t.get("special")}
    characters = {t: i for t, i in vocab.items() if len(t) == 1 and t not in special}
    longer = sorted(t for t in vocab if t not in characters and t not in special)
    if longer:
        raise InvalidArgumentError("tokenizer.json", f"not a character model: tokens such as {longer[:3]!r} are "
                                   "longer than one character")
    return characters, special


def _characters(characters: dict[str, int], special: dict[str, int]) -> str:
    """The characters in id order; they must hold ids 0..n-1, any special token after them."""
    count, by_id = len(characters), {i: c for c, i in characters.items()}
    if sorted(by_id) != list(range(count)) or any(0 <= i < count for i in special.values()):
        raise InvalidArgumentError("tokenizer.json", f"the {count} character tokens must hold ids 0-{count - 1}, "
                                   "before any special token")
    return "".join(by_id[i] for i in range(count))


def _chargpt_tensors(state: dict[str, np.ndarray], characters: int) -> dict[str, np.ndarray]:
    """GPT-2's names to chargpt's (Conv1D weights transposed back), the embedding cut to the characters' rows."""
    tensors = {}
    for name, value in state.items():
        name = name.removeprefix("transformer.")
        if name == "lm_head.weight" or name.endswith(HF_BUFFERS):
            continue
        if name.startswith("h."):
            name = "blocks." + name[2:]
            if name.endswith(".weight") and name.rsplit(".", 2)[-2] in ("c_attn", "c_proj", "c_fc"):
                value = value.T
        tensors[name] = value
    head, wte = state.get("lm_head.weight"), tensors.get("wte.weight")
    if head is not None and wte is not None and not np.array_equal(head, wte):
        raise InvalidArgumentError("model.safetensors: lm_head.weight", "differs from wte.weight: chargpt's head is "
                                   "tied to the embedding")
    if wte is not None and wte.ndim == 2:
        tensors["wte.weight"] = wte[:characters]
    return tensors


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgumentError(path.name, f"not a readable JSON file: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(path.name, "must hold a JSON object")
    return value
