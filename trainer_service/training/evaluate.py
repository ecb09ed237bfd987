"""Deterministic evaluation (whole validation split, fixed train subset), timelapse samples, attention maps."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from chargpt.core.model import GPT
from chargpt.core.sampling import generate, make_generator
from chargpt.sampling_params import SAMPLING_PRESETS, SamplingPreset
from trainer_service.training.data import CorpusData, mix_seed, split_windows, train_subset_windows
from trainer_service.training.runtime import Runtime, all_sum

TRAIN_ESTIMATE_WINDOWS = 256  # a fixed train subset: enough for a stable estimate, cheap next to training
ATTENTION_CHARS = 32  # the attention heatmaps' fixed text: short enough for a readable T x T map


class Evaluator:
    """Mean cross-entropy over fixed windows, computed the same way every time (no randomness at all)."""

    def __init__(self, data: CorpusData, block_size: int, batch_size: int, runtime: Runtime) -> None:
        self.runtime, self.batch_size = runtime, max(1, batch_size)
        self.data, self.block_size = data, block_size
        self.val_batches = _batches(split_windows(data.val, block_size), self.batch_size)
        n_val_windows = sum(x.shape[0] for x, _ in self.val_batches)
        train_x, train_y = train_subset_windows(data.train, block_size,
                                                min(TRAIN_ESTIMATE_WINDOWS, max(n_val_windows, 8)))
        self.train_batches = _batches([(train_x, train_y)], self.batch_size)
        self.windows = max(n_val_windows, train_x.shape[0])  # per split, evaluating everything
        self.tokens = sum(y.numel() for _, y in self.val_batches + self.train_batches)  # per evaluation

    def limit(self, windows: int) -> None:
        """Evaluate at most `windows` fixed windows per split, spread evenly over it: a time budget too short
        for the whole validation split gets a deterministic estimate of its loss instead."""
        if windows >= self.windows:
            return
        self.windows = windows
        self.val_batches = _batches([train_subset_windows(self.data.val, self.block_size, windows)],
                                    self.batch_size)
        self.train_batches = _batches([train_subset_windows(self.data.train, self.block_size, windows)],
                                      self.batch_size)
        self.tokens = sum(y.numel() for _, y in self.val_batches + self.train_batches)

    @torch.no_grad()
    def losses(self, model: GPT) -> tuple[float, float]:
        """(train estimate, validation) mean loss in nats per character; the model is left in train mode."""
        model.eval()
        try:
            return self._mean_loss(model, self.train_batches), self._mean_loss(model, self.val_batches)
        finally:
            model.train()

    def _mean_loss(self, model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        rt = self.runtime
        totals = torch.zeros(2, dtype=torch.float64, device=rt.device)  # (sum of losses, tokens)
        for i in range(rt.rank, len(batches), rt.world_size):  # ranks share the windows
            x, y = (t.to(rt.device) for t in batches[i])
            with rt.autocast():
                logits, _ = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
            totals[0] += loss.double()
            totals[1] += y.numel()
        totals = all_sum(totals, rt)
        return float(totals[0] / totals[1])


def _batches(windows: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for x, y in windows:
        out.extend(zip(torch.split(x, batch_size), torch.split(y, batch_size), strict=True))
    return out


@torch.no_grad()
def sample_text(model: GPT, data: CorpusData, length: int, seed: int, step: int, runtime: Runtime) -> str:
    """`length` characters generated from a newline (or the corpus's first character), seeded by (seed, step)."""
    model.eval()
    try:
        start = torch.tensor([data.tokenizer.encode(data.first_char)], device=runtime.device)
        gen = make_generator(mix_seed(seed, "sample", step), device=runtime.device)
        with runtime.autocast():
            ids = generate(model, start, length, SAMPLING_PRESETS[SamplingPreset.BALANCED], gen)
        return data.tokenizer.decode(ids[0, 1:].tolist())
    finally:
        model.train()


def attention_ids(data: CorpusData, block_size: int) -> torch.Tensor:
    """The fixed text the attention heatmaps show: the start of the validation split, (T,) token ids."""
    return data.val[:min(ATTENTION_CHARS, block_size)].long()


@torch.no_grad()
def attention_weights(model: GPT, ids: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The softmax attention weights of every layer and head on `ids`: (n_layer, n_head, T, T), float32 on CPU."""
    model.eval()
    try:
        with runtime.autocast():
            _, weights = model.forward_with_attention(ids[None].to(runtime.device))  # each (1, nh, T, T)
        return torch.stack([w[0] for w in weights]).float().cpu()
    finally:
        model.train()
