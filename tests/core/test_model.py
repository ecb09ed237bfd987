"""The GPT: shapes, loss, the attention-weights path and the KV cache against full forward passes."""

import math

import pytest
import torch

from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT, KVCache


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=23, block_size=24, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    return GPT(config).eval()


def test_forward_shapes_and_initial_loss(model: GPT) -> None:
    idx, targets = torch.randint(0, 23, (3, 24)), torch.randint(0, 23, (3, 24))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 24, 23)
    assert loss is not None and abs(loss.item() - math.log(23)) < 0.3  # near-uniform at init


def test_head_is_tied_to_embedding(model: GPT) -> None:
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()


def test_longer_than_block_size_is_rejected(model: GPT) -> None:
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_attention_path_matches_fast_path(model: GPT) -> None:
    idx = torch.randint(0, 23, (2, 17))
    fast, _ = model(idx)
    slow, weights = model.forward_with_attention(idx)
    assert (fast - slow).abs().max() < 1e-5
    assert len(weights) == 2 and weights[0].shape == (2, 4, 17, 17)
    for w in weights:
        assert torch.allclose(w.sum(-1), torch.ones(2, 4, 17), atol=1e-5)  # rows are distributions
        assert w.triu(diagonal=1).abs().max() == 0  # causal: nothing attends to the future


def test_kv_cache_matches_full_forward_for_ragged_batch(model: GPT) -> None:
    seqs = [torch.randint(0, 23, (24,)) for _ in range(3)]
    lengths = torch.tensor([5, 11, 2])
    padded = torch.zeros(3, 11, dtype=torch.long)
    for b, seq in enumerate(seqs):
        padded[b, : lengths[b]] = seq[: lengths[b]]
    cache = KVCache(model.config, batch_size=3)
    prefill_logits = model.prefill(padded, lengths, cache)
    worst = 0.0
    for b, seq in enumerate(seqs):
        full, _ = model(seq[None, : lengths[b]])
        worst = max(worst, (full[0] - prefill_logits[b, : lengths[b]]).abs().max().item())
    current = lengths.clone()
    for _ in range(10):
        tokens = torch.stack([seqs[b][current[b]] for b in range(3)])
        step_logits = model.decode_step(tokens, cache)
        current += 1
        for b, seq in enumerate(seqs):
            full, _ = model(seq[None, : current[b]])
            worst = max(worst, (full[0, -1] - step_logits[b]).abs().max().item())
    assert worst < 1e-4


def test_kv_cache_rows_can_be_any_slot_and_moved(model: GPT) -> None:
    seq = torch.randint(0, 23, (12,))
    cache = KVCache(model.config, batch_size=4)
    model.prefill(seq[None, :6], torch.tensor([6]), cache, rows=torch.tensor([2]))
    cache.copy_row(2, 0)
    logits = model.decode_step(seq[6:7], cache)  # row 0 now holds the sequence
    full, _ = model(seq[None, :7])
    assert (full[0, -1] - logits[0]).abs().max() < 1e-4
    assert cache.lengths[0] == 7


def test_kv_cache_copy_row_of_a_known_length_moves_only_its_positions(model: GPT) -> None:
    seq = torch.randint(0, 23, (12,))
    cache = KVCache(model.config, batch_size=4)
    model.prefill(seq[None, :6], torch.tensor([6]), cache, rows=torch.tensor([3]))
    cache.k[:, 3, :, 6:] = 7.0  # scratch past the sequence: stays behind
    cache.copy_row(3, 1, 6)
    assert cache.lengths[1] == 6 and not cache.k[:, 1, :, 6:].any()
    logits = model.decode_step(seq[6:7], cache, rows=torch.tensor([1]))
    full, _ = model(seq[None, :7])
    assert (full[0, -1] - logits[0]).abs().max() < 1e-4


def test_decode_past_cache_capacity_raises(model: GPT) -> None:
    cache = KVCache(model.config, batch_size=1, max_len=4)
    model.prefill(torch.zeros(1, 4, dtype=torch.long), torch.tensor([4]), cache)
    with pytest.raises(ValueError, match="full"):
        model.decode_step(torch.zeros(1, dtype=torch.long), cache)


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8, dropout=0.5))
    idx = torch.randint(0, 5, (2, 8))
    model.eval()
    a, _ = model(idx)
    b, _ = model(idx)
    assert torch.equal(a, b)
    model.train()
    c, _ = model(idx)
    assert not torch.equal(a, c)
