"""Figures (matplotlib from the `plot` extra, imported only when a figure is drawn): PNG files or inline in Jupyter.

Figures are built with matplotlib's object API (`matplotlib.figure.Figure`), never pyplot, so drawing one neither
switches a notebook's backend nor leaves global state behind.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

from chargpt_client import types as t
from chargpt_client.next_char import NextCharStep

_VISIBLE = {"\n": "⏎", " ": "␣", "\t": "⇥"}
GRID_MAX_CHARS = 40  # more characters per axis than this do not stay readable at LABEL_POINTS
GRID_MAX_PANELS = 8  # above this many (layer, head) pairs each layer is shown as the mean of its heads
CELL_INCHES = 0.17  # one character's row/column: LABEL_POINTS text fits in it (0.17 in = 12 pt)
LABEL_POINTS = 8.0
NEXT_CHAR_BARS = 8
NEXT_CHAR_MAX_STEPS = 12


class PlottingUnavailable(RuntimeError):
    """matplotlib is not installed."""

    def __init__(self) -> None:
        super().__init__("drawing figures needs matplotlib: pip install 'chargpt[plot]' (or pip install matplotlib)")


def figure(width: float, height: float) -> Any:
    """A new matplotlib Figure of this size in inches (no pyplot, no backend switch)."""
    try:
        import matplotlib  # first: a blocked or missing matplotlib fails here even if a submodule was imported
        import matplotlib.figure
    except ImportError:
        raise PlottingUnavailable() from None
    return matplotlib.figure.Figure(figsize=(width, height))


def require() -> None:
    """Fail early with a clear message when matplotlib is missing."""
    figure(1, 1)


def visible(ch: str) -> str:
    return _VISIBLE.get(ch, ch)


def save(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> None:
    fig.savefig(path, dpi=dpi)


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _panels(attention: t.Attention) -> list[tuple[str, list[list[float]]]]:
    """(title, T x T matrix) per panel: every (layer, head), or each layer's mean over heads when there are many."""
    n_layers, n_heads, size = attention.shape[0], attention.shape[1], attention.shape[2]
    if n_layers * n_heads <= GRID_MAX_PANELS:
        return [(f"layer {attention.layers[li]} head {attention.heads[hi]}", attention.matrix(li, hi))
                for li in range(n_layers) for hi in range(n_heads)]
    panels = []
    for li in range(n_layers):
        heads = [attention.matrix(li, hi) for hi in range(n_heads)]
        mean = [[sum(h[q][k] for h in heads) / n_heads for k in range(size)] for q in range(size)]
        panels.append((f"layer {attention.layers[li]} (mean of {n_heads} heads)", mean))
    return panels


def attention_figure(attention: t.Attention, title: str = "", max_chars: int = GRID_MAX_CHARS) -> Any:
    """Heatmaps (rows = queries, columns = keys) with every character readable on both axes.

    At most max_chars characters: the first ones, whose attention is exactly that of the shorter text (causal).
    """
    size = min(attention.shape[2], max_chars)
    labels = [visible(ch) for ch in attention.tokens[:size]]
    panels = _panels(attention)
    cols = math.ceil(math.sqrt(len(panels)))  # a squarish grid: 4 panels 2x2, 8 panels 3x3
    rows = -(-len(panels) // cols)
    side = max(1.5, size * CELL_INCHES) + 0.6  # the matrix plus room for the labels and the panel title
    fig = figure(side * cols + 0.3, side * rows + 0.7)
    for i, (name, matrix) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow([row[:size] for row in matrix[:size]], cmap="viridis", vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        ax.set_xticks(range(size), labels, fontsize=LABEL_POINTS, fontfamily="monospace")
        ax.set_yticks(range(size), labels, fontsize=LABEL_POINTS, fontfamily="monospace")
        ax.tick_params(length=0, pad=1)
        ax.set_title(name, fontsize=9)
    shown = "".join(attention.tokens[:size])
    cut = f" (first {size} of {attention.shape[2]} characters)" if size < attention.shape[2] else ""
    fig.suptitle((title or f"attention over {shown!r}") + cut, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (side * rows + 0.7)))  # keep 0.4 in for the suptitle
    return fig


def attention_grid(attention: t.Attention, path: str | os.PathLike[str], title: str = "",
                   max_chars: int = GRID_MAX_CHARS) -> None:
    """attention_figure saved as a PNG."""
    save(attention_figure(attention, title, max_chars), path)


def _loss_series(events: Iterable[t.JobEvent]) -> tuple[list[t.Progress], list[t.Evaluation]]:
    progress = [e for e in events if isinstance(e, t.Progress | t.Evaluation)]
    return ([e for e in progress if isinstance(e, t.Progress)], [e for e in progress if isinstance(e, t.Evaluation)])


def loss_figure(events: Iterable[t.JobEvent], title: str = "") -> Any:
    """Training loss per progress event and train/validation loss per evaluation."""
    steps, evals = _loss_series(events)
    fig = figure(7, 4)
    ax = fig.add_subplot()
    if steps:
        ax.plot([p.step for p in steps], [p.loss for p in steps], color="tab:blue", alpha=0.5, linewidth=1,
                label="train loss (per step)")
    if evals:
        ax.plot([e.step for e in evals], [e.train_loss for e in evals], "o-", color="tab:blue",
                label="train loss (evaluation)")
        ax.plot([e.step for e in evals], [e.val_loss for e in evals], "o-", color="tab:orange",
                label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.set_title(title or "loss curves")
    ax.grid(alpha=0.3)
    if steps or evals:
        ax.legend()
    fig.tight_layout()
    return fig


def loss_curves(events: Iterable[t.JobEvent], path: str | os.PathLike[str], title: str = "") -> int:
    """loss_figure saved as a PNG; returns the points drawn."""
    events = list(events)
    steps, evals = _loss_series(events)
    save(loss_figure(events, title), path)
    return len(steps) + len(evals)


def next_char_figure(steps: Sequence[NextCharStep], title: str = "", bars: int = NEXT_CHAR_BARS) -> Any:
    """Per generation step, the top candidates' raw probability beside their probability after the filters."""
    steps = list(steps)[:NEXT_CHAR_MAX_STEPS]
    fig = figure(7.5, 1.55 * max(1, len(steps)) + 0.6)
    for i, step in enumerate(steps):
        ax = fig.add_subplot(max(1, len(steps)), 1, i + 1)
        after = dict(step.filtered)
        shown = [ch for ch, _ in step.raw[:bars]]
        if step.chosen not in shown:
            shown[-1:] = [step.chosen]
        raw = dict(step.raw)
        xs = range(len(shown))
        ax.bar([x - 0.2 for x in xs], [raw.get(ch, 0.0) for ch in shown], width=0.4, color="0.65",
               label="model (raw)")
        ax.bar([x + 0.2 for x in xs], [after.get(ch, 0.0) for ch in shown], width=0.4, color="tab:blue",
               label="after temperature / top-k / top-p")
        ax.set_xticks(list(xs), [visible(ch) for ch in shown], fontsize=10, fontfamily="monospace")
        for tick, ch in zip(ax.get_xticklabels(), shown, strict=True):
            if ch == step.chosen:
                tick.set_color("tab:red")
                tick.set_fontweight("bold")
        ax.set_ylim(0, 1)
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=8)
        context = "".join(visible(c) for c in step.context[-24:])
        ax.set_title(f"…{context} → {visible(step.chosen)}", fontsize=9, loc="left", fontfamily="monospace")
        if i == 0:
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title or "the next-character choice (red: the character sampled)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_size_inches()[1]))
    return fig


def next_char_plot(steps: Sequence[NextCharStep], path: str | os.PathLike[str], title: str = "") -> None:
    """next_char_figure saved as a PNG."""
    save(next_char_figure(steps, title), path)
