"""Training engine pieces: data split and batches, evaluation windows, LR schedule, optimizer groups, precision."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT
from chargpt.errors import InvalidArgumentError
from trainer_service.training.api import TrainingPlan
from trainer_service.training.data import CorpusData, encode_text, split_windows, train_subset_windows
from trainer_service.training.evaluate import Evaluator
from trainer_service.training.optim import (
    Muon,
    MuonWithAdamW,
    build_optimizer,
    learning_rate_at,
    parameter_groups,
    set_learning_rate,
)
from trainer_service.training.runtime import (
    CPU_MICRO_BATCH_TOKENS,
    Runtime,
    micro_batch_tokens,
    micro_steps,
    resolve_precision,
    split_evenly,
)

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(60))


def plan(**update: object) -> TrainingPlan:
    base = TrainingPlan(job_id="j", model=ModelConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=16),
                        max_steps=1000, batch_size=4, learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=100,
                        weight_decay=0.1, grad_clip=1.0, eval_interval=0, sample_interval=0, sample_length=10,
                        seed=0, checkpoint_interval=0)
    return base.model_copy(update=update)


def cpu_runtime() -> Runtime:
    return Runtime(device=torch.device("cpu"), rank=0, local_rank=0, world_size=1, autocast_dtype=None,
                   compile=False, owns_process_group=False)


def test_split_is_first_90_percent_train_and_tokenizer_covers_the_whole_corpus() -> None:
    data = CorpusData(TEXT)
    n_train = int(0.9 * len(TEXT))
    assert data.tokenizer.decode(data.train.tolist()) == TEXT[:n_train]
    assert data.tokenizer.decode(data.val.tolist()) == TEXT[n_train:]
    assert set(data.tokenizer.vocabulary) == set(TEXT)
    assert encode_text(TEXT, data.tokenizer).tolist() == data.tokenizer.encode(TEXT)


def test_a_corpus_too_small_to_split_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="too small"):
        CorpusData("abcdefghi")


def test_batches_are_a_function_of_the_seed_and_targets_are_shifted_inputs() -> None:
    data = CorpusData(TEXT)
    x1, y1 = data.batch(8, 16, seed=42)
    x2, y2 = data.batch(8, 16, seed=42)
    x3, _ = data.batch(8, 16, seed=43)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.shape == (8, 16) and x1.dtype == torch.long
    assert torch.equal(x1[:, 1:], y1[:, :-1])


def test_validation_windows_cover_every_target_exactly_once() -> None:
    data = CorpusData(TEXT)
    windows = split_windows(data.val, 16)
    targets = torch.cat([y.flatten() for _, y in windows])
    assert targets.tolist() == data.val[1:].tolist()
    x, y = train_subset_windows(data.train, 16, 10)
    assert x.shape == (10, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_evaluation_is_deterministic_and_equals_the_plain_mean_over_the_split() -> None:
    data = CorpusData(TEXT)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=data.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                            dropout=0.5))
    evaluator = Evaluator(data, 16, 3, cpu_runtime())
    first, second = evaluator.losses(model), evaluator.losses(model)
    assert first == second and model.training
    model.eval()
    with torch.no_grad():
        losses = []
        for x, y in split_windows(data.val, 16):
            logits, _ = model(x)
            losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none"))
    assert first[1] == pytest.approx(float(torch.cat(losses).mean()), rel=1e-6)


def test_learning_rate_warms_up_linearly_then_cosine_decays_to_the_minimum() -> None:
    p = plan()
    assert learning_rate_at(p, 0) == pytest.approx(1e-3 / 101)
    assert learning_rate_at(p, 49) == pytest.approx(1e-3 * 50 / 101)
    assert learning_rate_at(p, 100) == pytest.approx(1e-3)
    assert learning_rate_at(p, 550) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert learning_rate_at(p, 1000) == pytest.approx(1e-4)
    values = [learning_rate_at(p, s) for s in range(100, 1001)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_linear_and_constant_schedules() -> None:
    linear = plan(lr_schedule="linear")
    assert learning_rate_at(linear, 550) == pytest.approx(5.5e-4)
    assert learning_rate_at(linear, 1000) == pytest.approx(1e-4)
    constant = plan(lr_schedule="constant", warmup_steps=0)
    assert {learning_rate_at(constant, s) for s in (0, 500, 999)} == {1e-3}


def test_weight_decay_applies_to_matrices_only() -> None:
    model = GPT(ModelConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=True))
    decayed, plain = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}  # type: ignore[attr-defined]
    plain_names = {names[id(p)] for p in plain["params"]}  # type: ignore[attr-defined]
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert decayed_names == {n for n, p in model.named_parameters() if p.dim() >= 2}
    assert "wte.weight" in decayed_names and "blocks.0.attn.c_attn.weight" in decayed_names
    assert "blocks.0.ln_1.weight" in plain_names and "blocks.0.attn.c_attn.bias" in plain_names
    total = sum(p.numel() for g in (decayed, plain) for p in g["params"])  # type: ignore[attr-defined]
    assert total == model.num_parameters()
    optimizer = build_optimizer(model, plan(), torch.device("cpu"))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest() -> None:
    model = GPT(ModelConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=True))
    optimizer = build_optimizer(model, plan(optimizer="muon", weight_decay=0.1), torch.device("cpu"))
    assert isinstance(optimizer, MuonWithAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in optimizer.muon.param_groups for p in g["params"]}
    adamw = [{names[id(p)] for p in g["params"]} for g in optimizer.adamw.param_groups]
    assert muon == {f"blocks.{i}.{m}.weight" for i in range(2)
                    for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert adamw[0] == {"wte.weight", "wpe.weight"}  # embeddings (wte is also the head): AdamW, decayed
    assert "ln_f.weight" in adamw[1] and "blocks.0.attn.c_attn.bias" in adamw[1]  # gains and biases: no decay
    assert [g["weight_decay"] for g in optimizer.adamw.param_groups] == [0.1, 0.0]
    assert len(muon) + len(adamw[0]) + len(adamw[1]) == len(list(model.parameters()))
    assert optimizer.param_groups == optimizer.muon.param_groups + optimizer.adamw.param_groups
    set_learning_rate(optimizer, 0.5)  # the schedule reaches both halves
    assert {g["lr"] for g in optimizer.muon.param_groups + optimizer.adamw.param_groups} == {0.5}


def test_precision_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    assert resolve_precision("auto", cpu) in (None, torch.bfloat16)
    with pytest.raises(InvalidArgumentError) as info:
        resolve_precision("fp16", cpu)
    assert info.value.field == "training.precision"


def test_batch_shares_add_up() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(8, 2) == [4, 4]
    assert sum(split_evenly(65, 4)) == 65
    assert math.isclose(sum(s / 10 for s in split_evenly(10, 3)), 1.0)


def test_cpu_passes_are_capped_in_tokens_and_never_fewer_than_the_plan_asks() -> None:
    assert micro_steps(64, 256, 1, 2048) == 8  # the notebook's batch: 8 passes of 8 x 256 tokens
    assert micro_steps(16, 128, 1, 2048) == 1  # the CPU preset fits one pass
    assert micro_steps(64, 256, 16, 2048) == 16  # more accumulation steps than the cap needs: the plan's
    assert micro_steps(3, 1024, 1, 512) == 3  # at least one sequence per pass
    assert micro_steps(64, 256, 2, None) == 2  # no cap (GPUs): exactly the plan's accumulation steps


def test_micro_batch_cap_is_for_cpus_and_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHARGPT_TRAIN_MICRO_TOKENS", raising=False)
    assert micro_batch_tokens(torch.device("cpu")) == CPU_MICRO_BATCH_TOKENS
    assert micro_batch_tokens(torch.device("cuda")) is None
    monkeypatch.setenv("CHARGPT_TRAIN_MICRO_TOKENS", "0")
    assert micro_batch_tokens(torch.device("cpu")) is None
    monkeypatch.setenv("CHARGPT_TRAIN_MICRO_TOKENS", "4096")
    assert micro_batch_tokens(torch.device("cpu")) == 4096


def test_muon_step_matches_torch_muon_up_to_its_bf16_rounding() -> None:
    torch.manual_seed(0)
    ours = [nn.Parameter(torch.randn(*shape)) for shape in ((24, 8), (8, 32), (8, 32))]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    a = Muon(ours, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    b = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()  # type: ignore[no-untyped-call]
    for p, q in zip(ours, theirs, strict=True):  # torch orthogonalises in bf16 (~3 significant digits), we in fp32
        assert torch.allclose(p, q, atol=2e-3) and not torch.equal(p, q)
        assert torch.equal(a.state[p]["momentum_buffer"], b.state[q]["momentum_buffer"])
