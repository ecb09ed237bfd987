"""nanoGPT checkpoints into chargpt's model: compiled prefixes, mask buffers, bias=False, a cropped position table,
vocabularies in another order; pickles that would run code never do; a GPT-2 BPE checkpoint is refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from chargpt.errors import InvalidArgumentError
from chargpt.formats.nanogpt import from_nanogpt, read_meta
from tests.formats.conftest import PROMPT, TinyModel, write_tiny
from tests.formats.nanogpt_layout import RunsCommand, write_nanogpt
from trainer_service.model_import import chargpt_model, load_nanogpt, read_model


def _logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0]


@pytest.mark.parametrize(("bias", "compiled", "masks", "wpe_rows"),
                         [(False, False, False, None), (True, True, True, 300), (False, True, False, 260)])
def test_a_nanogpt_checkpoint_imports_to_the_same_logits(tmp_path: Path, bias: bool, compiled: bool, masks: bool,
                                                         wpe_rows: int | None) -> None:
    tiny = write_tiny(tmp_path / "chargpt", seed=3, bias=bias)
    write_nanogpt(tiny, tmp_path / "nanogpt", compiled=compiled, mask_buffers=masks, wpe_rows=wpe_rows)
    imported = read_model("nanogpt", tmp_path / "nanogpt")
    assert imported.vocabulary == tiny.tokenizer.vocabulary and imported.step == 5000
    assert imported.arch.bias is bias and imported.arch.block_size == 256 and imported.arch.dropout == 0.1
    assert imported.val_loss == pytest.approx(1.4697)
    ids = tiny.tokenizer.encode(PROMPT)
    assert torch.equal(_logits(chargpt_model(imported).eval(), ids), tiny.logits(PROMPT))


def test_a_vocabulary_in_another_order_is_reordered_with_its_embedding(tmp_path: Path) -> None:
    tiny = write_tiny(tmp_path / "chargpt", seed=4, vocab="abc xyz\n")
    write_nanogpt(tiny, tmp_path / "nanogpt")
    checkpoint = load_nanogpt(tmp_path / "nanogpt" / "ckpt.pt")
    order = [3, 0, 7, 1, 2, 4, 5, 6]  # meta.pkl lists the characters in this order, wte rows with them
    vocabulary = "".join(tiny.tokenizer.vocabulary[i] for i in order)
    checkpoint["model"]["transformer.wte.weight"] = checkpoint["model"]["transformer.wte.weight"][order]
    checkpoint["model"]["lm_head.weight"] = checkpoint["model"]["transformer.wte.weight"]
    imported = from_nanogpt(checkpoint, vocabulary)
    assert imported.vocabulary == tiny.tokenizer.vocabulary
    ids = tiny.tokenizer.encode("abc zyx\n")
    assert torch.equal(_logits(chargpt_model(imported).eval(), ids), tiny.logits("abc zyx\n"))


def test_a_gpt2_bpe_checkpoint_is_not_a_character_model() -> None:
    for vocab_size in (50257, 50304):
        args = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=True, vocab_size=vocab_size, dropout=0.0)
        with pytest.raises(InvalidArgumentError, match="not a character model") as error:
            from_nanogpt({"model": {}, "model_args": args}, None)
        assert error.value.field == "ckpt.pt: model_args.vocab_size"
    args = {**args, "vocab_size": 65}
    with pytest.raises(InvalidArgumentError, match=r"meta\.pkl: required"):
        from_nanogpt({"model": {}, "model_args": args}, None)


def test_a_meta_pickle_that_would_run_a_command_never_does(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hostile = pickle.dumps({"itos": {0: "a"}, "payload": RunsCommand(f"touch {marker}")})
    with pytest.raises(InvalidArgumentError, match=r"meta.pkl: not a plain pickle .* it names posix.system"):
        read_meta(hostile)
    assert not marker.exists()
    with pytest.raises(InvalidArgumentError, match=r"meta\.pkl: not a plain pickle"):
        read_meta(pickle.dumps({"itos": {0: "a"}})[:-5])  # truncated
    assert read_meta(pickle.dumps({"vocab_size": 2, "itos": {0: "\n", 1: "a"}, "stoi": {"\n": 0, "a": 1}})) == "\na"


def test_a_ckpt_pickle_that_would_run_a_command_never_does(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"model": {}, "model_args": {}, "config": RunsCommand(f"touch {marker}")}, tmp_path / "ckpt.pt")
    with pytest.raises(InvalidArgumentError, match=r"ckpt.pt: it holds objects other than tensors") as error:
        load_nanogpt(tmp_path / "ckpt.pt")
    assert not marker.exists()
    assert "GLOBAL" in str(error.value) and "weights_only" not in str(error.value)  # never torch's advice to unguard


@pytest.mark.parametrize(("meta", "message"), [
    ({"itos": {0: "ab"}}, "meta.pkl: itos: must map the ids 0..n-1 to single characters"),
    ({"itos": {0: "a", 2: "b"}}, "meta.pkl: itos: must map the ids 0..n-1"),
    ({"itos": {0: "a", 1: "b"}, "stoi": {"a": 1, "b": 0}}, "meta.pkl: stoi: does not invert itos"),
    ({"itos": {0: "a"}, "vocab_size": 3}, "meta.pkl: vocab_size: is 3 but itos has 1 characters"),
    ([1, 2], "meta.pkl: itos: must be a dict"),
])
def test_a_bad_vocabulary_names_its_field(meta: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        read_meta(pickle.dumps(meta))


def test_vocabulary_size_and_shapes_that_disagree_name_the_field(tmp_path: Path, tiny: TinyModel) -> None:
    write_nanogpt(tiny, tmp_path)
    checkpoint = load_nanogpt(tmp_path / "ckpt.pt")
    with pytest.raises(InvalidArgumentError, match="vocab_size: the vocabulary has 3 characters"):
        from_nanogpt(checkpoint, "abc")
    state = dict(checkpoint["model"])
    state["transformer.h.1.mlp.c_fc.weight"] = state["transformer.h.1.mlp.c_fc.weight"][:, :16]
    with pytest.raises(InvalidArgumentError, match=r"ckpt.pt: blocks.1.mlp.c_fc.weight: has shape \(128, 16\)"):
        from_nanogpt({**checkpoint, "model": state}, tiny.tokenizer.vocabulary)
    with pytest.raises(InvalidArgumentError, match=r"model_args\.n_head: 3 heads must divide n_embd 32"):
        from_nanogpt({**checkpoint, "model_args": {**checkpoint["model_args"], "n_head": 3}},
                     tiny.tokenizer.vocabulary)
