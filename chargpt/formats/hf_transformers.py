"""Hugging Face transformers export: a GPT2LMHeadModel directory with a character-level tokenizer (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from chargpt.formats.checkpoint_dir import END_OF_TEXT, LAYER_NORM_EPS, CharCheckpoint
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
