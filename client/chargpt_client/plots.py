"""PNG figures (matplotlib from the `plot` extra, Agg backend, imported only when a figure is drawn)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from chargpt_client import types as t

_VISIBLE = {"\n": "⏎", " ": "␣", "\t": "⇥"}


class PlottingUnavailable(RuntimeError):
    """matplotlib is not installed."""

    def __init__(self) -> None:
        super().__init__("drawing PNGs needs matplotlib: pip install 'chargpt[plot]' (or pip install matplotlib)")


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    try:
        import matplotlib
    except ImportError:
        raise PlottingUnavailable() from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def visible(ch: str) -> str:
    return _VISIBLE.get(ch, ch)


def attention_grid(attention: t.Attention, path: str | os.PathLike[str], title: str = "") -> None:
    """One heatmap per (layer, head): rows are queries, columns keys, characters on both axes."""
    plt = pyplot()
    n_layers, n_heads, size = attention.shape[0], attention.shape[1], attention.shape[2]
    cell = max(1.6, min(3.2, size * 0.11))
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(cell * n_heads + 0.5, cell * n_layers + 0.8),
                             squeeze=False)
    labels = [visible(ch) for ch in attention.tokens]
    font = max(3.0, min(8.0, 160 / max(size, 1)))
    for li in range(n_layers):
        for hi in range(n_heads):
            ax = axes[li][hi]
            ax.imshow(attention.matrix(li, hi), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks(range(size), labels, fontsize=font, fontfamily="monospace")
            ax.set_yticks(range(size), labels, fontsize=font, fontfamily="monospace")
            ax.tick_params(length=0, pad=1)
            ax.set_title(f"layer {attention.layers[li]} head {attention.heads[hi]}", fontsize=8)
    fig.suptitle(title or f"attention over {''.join(attention.tokens)!r}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_curves(events: Iterable[t.JobEvent], path: str | os.PathLike[str], title: str = "") -> int:
    """Training loss per progress event and train/validation loss per evaluation; returns points drawn."""
    plt = pyplot()
    steps: list[int] = []
    losses: list[float] = []
    evals: list[t.Evaluation] = []
    for event in events:
        if isinstance(event, t.Progress):
            steps.append(event.step)
            losses.append(event.loss)
        elif isinstance(event, t.Evaluation):
            evals.append(event)
    fig, ax = plt.subplots(figsize=(7, 4))
    if steps:
        ax.plot(steps, losses, color="tab:blue", alpha=0.5, linewidth=1, label="train loss (per step)")
    if evals:
        ax.plot([e.step for e in evals], [e.train_loss for e in evals], "o-", color="tab:blue",
                label="train loss (evaluation)")
        ax.plot([e.step for e in evals], [e.val_loss for e in evals], "o-", color="tab:orange",
                label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.set_title(title or "loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(steps) + len(evals)
