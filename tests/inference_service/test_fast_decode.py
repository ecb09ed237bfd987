"""The engine's lean decode step gives GPT.decode_step's logits and cache contents."""

from __future__ import annotations

import torch

from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT, KVCache
from inference_service.fast_decode import FastDecoder


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
