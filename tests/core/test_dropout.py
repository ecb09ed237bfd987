"""Fast dropout: the keep rate and scale of torch's dropout, seeded by torch, and the model's switch to it."""

import pytest
import torch

from chargpt.core.config import ModelConfig
from chargpt.core.dropout import fast_dropout, keep_mask
from chargpt.core.model import GPT


def test_keep_rate_and_scale_match_the_drop_probability() -> None:
    torch.manual_seed(0)
    keep, scale = keep_mask(torch.Size([1000, 1000]), 0.2, torch.device("cpu"), torch.float32)
    assert keep.dtype == torch.float32 and set(keep.unique().tolist()) == {0.0, 1.0}
    assert keep.mean().item() == pytest.approx(0.8, abs=2e-3)  # 5 standard deviations
    assert scale == pytest.approx(1 / 0.8, rel=1e-4)
    out = fast_dropout(torch.ones(1000, 1000), 0.2)
    assert out.mean().item() == pytest.approx(1.0, abs=3e-3)  # the expectation is kept


def test_masks_follow_torch_seed() -> None:
    x = torch.ones(64, 64)
    torch.manual_seed(5)
    a = fast_dropout(x, 0.5)
    torch.manual_seed(5)
    b = fast_dropout(x, 0.5)
    c = fast_dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_identity_when_off_and_zeros_at_one() -> None:
    x = torch.randn(4, 4)
    assert fast_dropout(x, 0.0) is x and fast_dropout(x, 0.5, training=False) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros(4, 4))
    assert torch.isfinite(fast_dropout(x, 0.999999)).all()  # rounds to 65535/65536, not to "drop all"


def test_gradient_flows_through_the_kept_elements_only() -> None:
    x = torch.randn(32, 32, requires_grad=True)
    out = fast_dropout(x, 0.3)
    out.sum().backward()
    assert x.grad is not None
    kept = out != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.7), rtol=1e-4)
    assert torch.all(x.grad[~kept] == 0)


def _model(dropout: float) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=dropout))


def test_fast_dropout_model_trains_repeatably_and_evaluates_as_before() -> None:
    plain, fast = _model(0.3), _model(0.3)
    fast.use_fast_dropout()
    idx = torch.randint(0, 11, (3, 16))
    assert torch.allclose(plain.eval()(idx)[0], fast.eval()(idx)[0], atol=1e-6)
    fast.train()
    torch.manual_seed(1)
    a, _ = fast(idx)
    torch.manual_seed(1)
    b, _ = fast(idx)
    assert torch.equal(a, b) and not torch.allclose(a, fast.eval()(idx)[0])


def test_fast_attention_path_computes_what_sdpa_does() -> None:
    # A drop probability below 2^-17 rounds to "keep everything", so training mode runs the written-out
    # attention (and fast_dropout elsewhere) as an identity: it must then equal the eval-mode SDPA path.
    model = _model(1e-9)
    model.use_fast_dropout()
    idx = torch.randint(0, 11, (2, 16))
    expected, _ = model.eval()(idx)
    got, _ = model.train()(idx)
    assert torch.allclose(got, expected, atol=1e-5)
