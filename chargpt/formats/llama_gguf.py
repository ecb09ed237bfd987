"""GGUF export for llama.cpp: architecture gpt2 with a byte-level vocabulary of chargpt's characters (no torch).

llama.cpp tokenizes "gpt2" vocabularies as GPT-2 does: UTF-8 bytes spelled as printable characters (space is "Ġ",
newline "Ċ"), merged by rank. Each chargpt character is one token whose text is its bytes so spelled; a character of
several bytes gets the merges that join its bytes left to right. A merge's left side always starts with a lead byte
and its right side is one continuation byte, so no merge can join two characters. Text outside the vocabulary ends
as symbols that are not tokens, which llama.cpp's tokenizer drops without a word.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from chargpt.errors import InvalidArgumentError
from chargpt.formats.checkpoint_dir import END_OF_TEXT, LAYER_NORM_EPS, CharCheckpoint
from chargpt.formats.model_card import write_model_card
from chargpt.sampling_params import SAMPLING_PRESETS, SamplingPreset

BALANCED = SAMPLING_PRESETS[SamplingPreset.BALANCED]  # the notebook's balanced setting: the export's default

FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
Q8_0_BLOCK = 32  # q8_0 quantizes rows in blocks of 32 values
# chargpt name (per block) -> llama.cpp gpt2 name; Linear weights keep PyTorch's (out, in) layout, which is ggml's
# {in, out}.
LAYER_TENSORS = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
                 "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def gpt2_byte_encoder() -> dict[int, str]:
    """GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelled, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in spelled:
            spelled[b], extra = chr(256 + extra), extra + 1
    return dict(sorted(spelled.items()))


def byte_level_vocabulary(vocabulary: str) -> tuple[list[str], list[str]]:
    """Token texts (chargpt's ids, then the end-of-text token) and the merges that build them."""
    encoder = gpt2_byte_encoder()
    tokens, merges = [], dict[str, None]()  # a dict keeps the merges ordered and unique
    for char in vocabulary:
        symbols = [encoder[b] for b in char.encode("utf-8")]
        tokens.append("".join(symbols))
        for k in range(1, len(symbols)):
            merges["".join(symbols[:k]) + " " + symbols[k]] = None
    if not merges:  # llama.cpp refuses a BPE vocabulary without merges: join two continuation bytes, which no
        # vocabulary character contains (they are all single bytes here)
        merges[f"{encoder[0x80]} {encoder[0x80]}"] = None
    return [*tokens, END_OF_TEXT], list(merges)


def export_gguf(checkpoint: CharCheckpoint, out: Path, types: tuple[str, ...]) -> None:
    """One model-<type>.gguf per type (f32, f16, q8_0), and README.md."""
    for name in types:
        write_gguf(checkpoint, out / f"model-{name}.gguf", name)
    write_model_card(checkpoint, out / "README.md", "gguf")


def write_gguf(checkpoint: CharCheckpoint, path: Path, file_type: str) -> None:
    if file_type == "q8_0" and checkpoint.arch.n_embd % Q8_0_BLOCK:
        raise InvalidArgumentError("gguf_types", f"q8_0 quantizes rows in blocks of {Q8_0_BLOCK}: n_embd "
                                   f"{checkpoint.arch.n_embd} is not a multiple of it (export f32 or f16)")
    writer = gguf.GGUFWriter(str(path), arch="gpt2")
    _write_metadata(writer, checkpoint, FILE_TYPES[file_type])
    _write_tokenizer(writer, checkpoint.vocabulary)
    for name, tensor in gpt2_tensors(checkpoint).items():
        data, raw_type = _encode(tensor, file_type)
        writer.add_tensor(name, data, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_metadata(writer: gguf.GGUFWriter, checkpoint: CharCheckpoint, file_type: int) -> None:
    a = checkpoint.arch
    writer.add_name("chargpt " + str(checkpoint.training.get("corpus_name") or "model"))
    writer.add_context_length(a.block_size)
    writer.add_embedding_length(a.n_embd)
    writer.add_feed_forward_length(4 * a.n_embd)
    writer.add_block_count(a.n_layer)
    writer.add_head_count(a.n_head)
    writer.add_layer_norm_eps(LAYER_NORM_EPS)
    writer.add_file_type(file_type)
    writer.add_sampling_temp(BALANCED.temperature)
    writer.add_sampling_top_k(BALANCED.top_k)


def _write_tokenizer(writer: gguf.GGUFWriter, vocabulary: str) -> None:
    tokens, merges = byte_level_vocabulary(vocabulary)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * len(vocabulary) + [gguf.TokenType.CONTROL])
    writer.add_token_merges(merges)
    eot = len(vocabulary)  # llama.cpp wants an end-of-text token, and no chargpt character should stop generation
    writer.add_bos_token_id(eot)
    writer.add_eos_token_id(eot)
    writer.add_add_bos_token(False)


def gpt2_tensors(checkpoint: CharCheckpoint) -> dict[str, np.ndarray]:
    """The tensors under llama.cpp's gpt2 names (no output.weight: llama.cpp then ties the head to token_embd)."""
    t = checkpoint.tensors
    tensors = {"token_embd.weight": checkpoint.embedding_with_end_of_text(), "position_embd.weight": t["wpe.weight"],
               "output_norm.weight": t["ln_f.weight"], "output_norm.bias": t["ln_f.bias"]}
    for i in range(checkpoint.arch.n_layer):
        for ours, theirs in LAYER_TENSORS.items():
            for kind in ("weight", "bias"):
                tensors[f"blk.{i}.{theirs}.{kind}"] = checkpoint.layer(i, f"{ours}.{kind}")
    return tensors


def _encode(tensor: np.ndarray, file_type: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """Matrices in the file's type; vectors (norms, biases) stay float32, which llama.cpp's graph needs."""
    if tensor.ndim < 2 or file_type == "f32":
        return tensor.astype(np.float32), None
    if file_type == "f16" or tensor.shape[-1] % Q8_0_BLOCK:
        return tensor.astype(np.float16), None
    return gguf.quants.quantize(tensor, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
