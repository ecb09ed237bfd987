"""The engine's lean decode step gives GPT.decode_step's logits and cache contents."""

from __future__ import annotations

import time

import pytest
import torch

from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT, KVCache
from inference_service.fast_decode import Attention, FastDecoder, RowGroups, attend_matmul, attend_sdpa


def test_matches_gpt_decode_step_on_a_ragged_batch() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=19, block_size=24, n_layer=2, n_head=4, n_embd=32, dropout=0.0,
                            bias=True)).eval()
    reference, fast = KVCache(model.config, 6), KVCache(model.config, 6)
    lengths = torch.tensor([3, 9, 1, 14])
    prompts = torch.randint(0, 19, (4, 14))
    model.prefill(prompts, lengths, reference)
    model.prefill(prompts, lengths, fast)
    decoder = FastDecoder(model, fast)
    current = lengths.clone()
    for _ in range(8):
        tokens = torch.randint(0, 19, (4,))
        expected = model.decode_step(tokens, reference)
        got = decoder.step(tokens, current.clone(), int(current.max()) + 1)
        current += 1
        assert torch.allclose(got, expected, atol=1e-5)
        assert torch.equal(fast.lengths, reference.lengths)
    for b, n in enumerate(current.tolist()):
        assert torch.allclose(fast.k[:, b, :, :n], reference.k[:, b, :, :n], atol=1e-6)
        assert torch.allclose(fast.v[:, b, :, :n], reference.v[:, b, :, :n], atol=1e-6)


def test_bfloat16_cache_stays_close_and_batch_independent() -> None:
    torch.manual_seed(1)
    model = GPT(ModelConfig(vocab_size=19, block_size=24, n_layer=2, n_head=4, n_embd=32, dropout=0.0)).eval()
    tokens = torch.randint(0, 19, (3, 10))
    outs = []
    for dtype in (torch.float32, torch.bfloat16):
        cache = KVCache(model.config, 3, dtype=dtype)
        decoder = FastDecoder(model, cache)
        for t in range(10):
            logits = decoder.step(tokens[:, t], torch.full((3,), t), t + 1)
        outs.append(logits)
    assert (outs[0] - outs[1]).abs().max() < 0.05 * outs[0].abs().max()
    alone = KVCache(model.config, 1, dtype=torch.bfloat16)
    decoder = FastDecoder(model, alone)
    for t in range(10):
        single = decoder.step(tokens[1:2, t], torch.full((1,), t), t + 1)
    assert torch.allclose(single[0], outs[1][1], atol=1e-5)  # a row's numbers do not depend on its batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_attention_equals_sdpa(dtype: torch.dtype) -> None:
    """Both decode attention paths on one ragged batch: same outputs, and each row independent of its batch."""
    torch.manual_seed(2)
    B, nh, S, hs = 5, 4, 17, 8
    q, k, v = (torch.randn(B, nh, n, hs).to(dtype) for n in (1, S, S))
    positions = torch.tensor([0, 16, 3, 9, 12])
    mask = torch.zeros(B, 1, 1, S, dtype=dtype)
    mask.masked_fill_(torch.arange(S)[None, None, None, :] > positions[:, None, None, None], float("-inf"))
    sdpa, matmul = attend_sdpa(q, k, v, mask, hs**-0.5), attend_matmul(q, k, v, mask, hs**-0.5)
    assert sdpa.shape == matmul.shape == (B, nh, 1, hs) and matmul.dtype == dtype
    assert torch.allclose(matmul.float(), sdpa.float(), atol=1e-5 if dtype == torch.float32 else 2e-2)
    alone = attend_matmul(q[3:4], k[3:4, :, :10], v[3:4, :, :10], mask[3:4, :, :, :10], hs**-0.5)
    assert torch.allclose(alone, matmul[3:4], atol=1e-6)  # keys past a row's length change nothing


@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
def test_both_attention_paths_match_gpt_decode_step(attention: Attention) -> None:
    torch.manual_seed(3)
    model = GPT(ModelConfig(vocab_size=19, block_size=24, n_layer=2, n_head=4, n_embd=32, dropout=0.0)).eval()
    reference, fast = KVCache(model.config, 4), KVCache(model.config, 4)
    lengths = torch.tensor([5, 1, 11, 7])
    prompts = torch.randint(0, 19, (4, 11))
    model.prefill(prompts, lengths, reference)
    model.prefill(prompts, lengths, fast)
    decoder = FastDecoder(model, fast, attention)
    for step in range(6):
        tokens = torch.randint(0, 19, (4,))
        expected = model.decode_step(tokens, reference)
        got = decoder.step(tokens, lengths + step, int(lengths.max()) + step + 1)
        assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
def test_a_lone_row_matches_gpt_decode_step_and_leaves_the_other_rows(attention: Attention) -> None:
    """The one-row path (no mask, slice writes) in a row past 0: GPT.decode_step's logits, keys and values."""
    torch.manual_seed(4)
    model = GPT(ModelConfig(vocab_size=19, block_size=24, n_layer=2, n_head=4, n_embd=32, dropout=0.0,
                            bias=True)).eval()
    reference, fast = KVCache(model.config, 3), KVCache(model.config, 3)
    lengths = torch.tensor([4, 6, 2])
    prompts = torch.randint(0, 19, (3, 6))
    model.prefill(prompts, lengths, reference)
    model.prefill(prompts, lengths, fast)
    others = fast.k[:, [0, 2]].clone()
    decoder, row = FastDecoder(model, fast, attention), torch.tensor([1])
    for step in range(5):
        tokens = torch.randint(0, 19, (1,))
        expected = model.decode_step(tokens, reference, rows=row)
        got = decoder.step(tokens, torch.tensor([6 + step]), 6 + step + 1, first_row=1)
        assert got.shape == (1, 19) and torch.allclose(got, expected, atol=1e-5)
        assert torch.equal(fast.lengths, reference.lengths) and fast.lengths.tolist() == [4, 7 + step, 2]
    assert torch.allclose(fast.k[:, 1, :, :11], reference.k[:, 1, :, :11], atol=1e-6)
    assert torch.allclose(fast.v[:, 1, :, :11], reference.v[:, 1, :, :11], atol=1e-6)
    assert torch.equal(fast.k[:, [0, 2]], others)


@pytest.mark.parametrize("bias", [False, True])
def test_transposed_copies_serve_only_a_lone_row_with_gpt_decode_steps_numbers(bias: bool) -> None:
    """lone_transposed: a lone row multiplies by (in, out) copies of c_attn and c_fc (GPT.decode_step's numbers to
    float rounding); a batch of several rows takes the plain path, to the bit."""
    torch.manual_seed(5)
    model = GPT(ModelConfig(vocab_size=19, block_size=24, n_layer=2, n_head=4, n_embd=32, dropout=0.0,
                            bias=bias)).eval()
    reference, plain_cache, lone_cache = (KVCache(model.config, 3) for _ in range(3))
    plain, lone = FastDecoder(model, plain_cache), FastDecoder(model, lone_cache, lone_transposed=True)
    wide = [layer.wide for layer in lone.layers]
    assert all(w is not None and w[1].shape == (32, 128) for w in wide) and plain.layers[1].wide is None
    for t in range(6):
        tokens = torch.randint(0, 19, (1,))
        expected = model.decode_step(tokens, reference, rows=torch.tensor([0]))
        got = lone.step(tokens, torch.tensor([t]), t + 1)
        assert torch.allclose(got, expected, atol=1e-5)
        plain.step(tokens, torch.tensor([t]), t + 1)
    for mine, theirs in ((lone_cache.k, plain_cache.k), (lone_cache.v, plain_cache.v)):
        mine.copy_(theirs)  # the same keys and values in both caches
    for copies in wide:
        assert copies is not None
        copies[1].zero_()  # broken copies: only a step that reads them can tell
    tokens, positions = torch.randint(0, 19, (3,)), torch.tensor([6, 0, 0])
    assert torch.equal(lone.step(tokens, positions, 7), plain.step(tokens, positions, 7))
    alone = lone.step(tokens[:1], torch.tensor([7]), 8)
    assert not torch.allclose(alone, plain.step(tokens[:1], torch.tensor([7]), 8), atol=1e-3)


@pytest.mark.parametrize("groups", [2, 3])
def test_row_groups_give_one_steps_logits_and_cache(groups: int) -> None:
    """A ragged batch decoded as row groups at once (each on one torch thread, attending only as far as its own
    longest row) gives the whole batch's logits in row order, and the same cache rows and lengths."""
    torch.manual_seed(3)
    model = GPT(ModelConfig(vocab_size=19, block_size=24, n_layer=2, n_head=4, n_embd=32, dropout=0.0)).eval()
    whole, split = KVCache(model.config, 8), KVCache(model.config, 8)
    lengths = [3, 9, 1, 14, 2, 7, 11]
    prompts = torch.randint(0, 19, (7, 14))
    for cache in (whole, split):
        model.prefill(prompts, torch.tensor(lengths), cache)
    one, grouped = FastDecoder(model, whole), FastDecoder(model, split)
    row_groups = RowGroups(groups)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for _ in range(6):
            tokens = torch.randint(0, 19, (7,))
            expected = one.step(tokens, torch.tensor(lengths), max(lengths) + 1)
            got = row_groups.step(grouped, tokens, lengths)
            assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
            lengths = [n + 1 for n in lengths]
            assert torch.equal(split.lengths, whole.lengths) and split.lengths[:7].tolist() == lengths
    finally:
        row_groups.close()
        torch.set_num_threads(threads)
    for b, n in enumerate(lengths):
        assert torch.allclose(split.k[:, b, :, :n], whole.k[:, b, :, :n], atol=1e-6)
        assert torch.allclose(split.v[:, b, :, :n], whole.v[:, b, :, :n], atol=1e-6)


def test_row_groups_need_two_groups() -> None:
    with pytest.raises(ValueError, match="at least 2 groups"):
        RowGroups(1)


class ThreadCountRecorder:
    """Stands in for FastDecoder: records each group's rows and the torch thread count it ran with; the group
    starting at `fail_row` raises at once, the other workers' groups take `seconds` (the caller's none)."""

    def __init__(self, fail_row: int = -1, seconds: float = 0.0) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.fail_row, self.seconds = fail_row, seconds

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, attend_len: int, first_row: int = 0
             ) -> torch.Tensor:
        if first_row == self.fail_row:
            raise RuntimeError("this group's step failed")
        if first_row:
            time.sleep(self.seconds)
        self.calls.append((first_row, tokens.shape[0], torch.get_num_threads()))
        return torch.zeros(tokens.shape[0], 3)


def test_row_group_workers_run_on_one_torch_thread_whatever_the_default() -> None:
    """torch's thread count belongs to each OS thread once it has run an op; a worker first used while the
    default is 2 must still run its group on one."""
    threads = torch.get_num_threads()
    row_groups = RowGroups(3)
    try:
        torch.set_num_threads(2)
        recorder = ThreadCountRecorder()
        logits = row_groups.step(recorder, torch.zeros(7, dtype=torch.long), [1] * 7)  # type: ignore[arg-type]
        assert logits.shape == (7, 3)
        assert sorted(call[:2] for call in recorder.calls) == [(0, 2), (2, 2), (4, 3)]
        assert [n for first, _, n in recorder.calls if first > 0] == [1, 1]
    finally:
        row_groups.close()
        torch.set_num_threads(threads)


def test_a_failed_group_returns_only_once_every_group_has_stopped_writing() -> None:
    """The engine clears the cache after a failed step, so no other group may still be writing it then."""
    row_groups = RowGroups(3)
    try:
        recorder = ThreadCountRecorder(fail_row=2, seconds=0.2)
        with pytest.raises(RuntimeError, match="this group's step failed"):
            row_groups.step(recorder, torch.zeros(6, dtype=torch.long), [1] * 6)  # type: ignore[arg-type]
        assert sorted(first for first, _, _ in recorder.calls) == [0, 4]
    finally:
        row_groups.close()
