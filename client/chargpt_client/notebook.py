"""Jupyter helpers: services for the kernel's lifetime, a tqdm progress bar, rich tables, figures and views.

Torch-free like the rest of the client; matplotlib (the `plot` extra) and tqdm (the `notebook` extra) are imported
only when a helper needs them. Every object here displays itself (`_repr_html_` / `_repr_png_`) when it is the last
expression of a cell.
"""

from __future__ import annotations

import atexit
import base64
import html
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chargpt_client import plots
from chargpt_client import types as t
from chargpt_client.attention_view import attention_html
from chargpt_client.next_char import NextCharStep, next_char_steps
from chargpt_client.options import INFERENCE_ADDRESS_ENV, TRAINER_ADDRESS_ENV, ClientOptions
from chargpt_client.render import fmt, progress_total
from chargpt_client.sync import Client

__all__ = ["AttentionView", "LossHistory", "NextCharView", "Png", "Table", "connect", "next_char_view",
           "score_table", "watch_training"]


@dataclass(frozen=True)
class Png:
    """PNG bytes that display inline; `save(path)` writes them."""

    data: bytes = field(repr=False)

    @classmethod
    def of(cls, fig: Any) -> Png:
        return cls(plots.png_bytes(fig))

    def _repr_png_(self) -> bytes:
        return self.data

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_bytes(self.data)

    def img_tag(self) -> str:
        return f'<img src="data:image/png;base64,{base64.b64encode(self.data).decode()}"/>'


@dataclass(frozen=True)
class Table:
    """A table that renders as HTML in Jupyter and as aligned text in print()."""

    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
                       for row in self.rows)
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return f'<table class="chargpt-table">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    def __str__(self) -> str:
        import io

        from chargpt_client.render import print_table

        out = io.StringIO()
        if self.caption:
            out.write(self.caption + "\n")
        print_table(self.headers, self.rows, out)
        return out.getvalue().rstrip("\n")


def score_table(scores: dict[str, t.ScoreResult], caption: str = "") -> Table:
    """Perplexity and bits per character per scored text."""
    rows = [[name, s.num_tokens, s.mean_nll, s.perplexity, s.bits_per_char] for name, s in scores.items()]
    return Table(["text", "characters", "mean loss (nats)", "perplexity", "bits/char"], rows, caption)


@dataclass(frozen=True)
class LossHistory:
    """A job's loss curves (inline PNG when matplotlib is there) above its table of evaluations."""

    events: Sequence[t.JobEvent]
    title: str = ""

    @property
    def evaluations(self) -> list[t.Evaluation]:
        return [e for e in self.events if isinstance(e, t.Evaluation)]

    def table(self) -> Table:
        rows = [[e.step, e.train_loss, e.val_loss, "yes" if e.is_best else ""] for e in self.evaluations]
        return Table(["step", "train loss", "validation loss", "best so far"], rows)

    def figure(self) -> Png:
        return Png.of(plots.loss_figure(self.events, self.title))

    def _repr_html_(self) -> str:
        try:
            image = self.figure().img_tag()
        except plots.PlottingUnavailable as exc:
            image = f"<p>({html.escape(str(exc))})</p>"
        return f'<div class="chargpt-loss">{image}{self.table()._repr_html_()}</div>'


@dataclass(frozen=True)
class AttentionView:
    """The explorable HTML view of an attention result; `heatmaps()` gives the static grid as a PNG."""

    attention: t.Attention
    title: str = ""

    def _repr_html_(self) -> str:
        return attention_html(self.attention, self.title)

    def heatmaps(self, max_chars: int = plots.GRID_MAX_CHARS) -> Png:
        return Png.of(plots.attention_figure(self.attention, self.title, max_chars))


@dataclass(frozen=True)
class NextCharView:
    """The next-character distribution at each step of a generation, before and after the sampling filters."""

    steps: list[NextCharStep]
    title: str = ""

    def figure(self) -> Png:
        return Png.of(plots.next_char_figure(self.steps, self.title))

    def _repr_png_(self) -> bytes:
        return self.figure().data

    def table(self, top: int = 5) -> Table:
        rows = [[repr(s.chosen), f"{s.raw_mass:.0%}",
                 " ".join(f"{ch!r}:{p:.2f}" for ch, p in s.raw[:top]),
                 " ".join(f"{ch!r}:{p:.2f}" for ch, p in s.filtered[:top] if p > 0)] for s in self.steps]
        return Table(["sampled", "top-N mass", "raw (model)", "after filters"], rows)


def next_char_view(result: t.GenerationResult, prompt: str = "", title: str = "", **filters: Any) -> NextCharView:
    """NextCharView of a generation made with logprobs=N; filters: temperature, top_k, top_p (default: its own)."""
    return NextCharView(next_char_steps(result, prompt, **filters), title)


def watch_training(client: Client, job_id: str, on_sample: Callable[[t.Sample], None] | None = None,
                   description: str = "training") -> Iterator[t.JobEvent]:
    """A job's events until it ends, with a tqdm.auto progress bar (a widget in Jupyter, text elsewhere)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=client.trainer.get_job(job_id).max_steps, desc=description, unit="step")
    try:
        for event in client.trainer.watch_job(job_id):
            if isinstance(event, t.Progress):
                total = progress_total(event)  # a budget's estimate: it can shrink as the run goes
                if total is not None and total != bar.total:
                    bar.total = total
                bar.update(max(0, event.step - bar.n))
                bar.set_postfix(loss=f"{event.loss:.3f}", refresh=False)
            elif isinstance(event, t.Sample) and on_sample is not None:
                on_sample(event)
            yield event
    finally:
        bar.close()


_stack = ExitStack()
atexit.register(_stack.close)


def connect(data_dir: str | os.PathLike[str] = "chargpt-data", device: str = "auto",
            timeout: float = 120.0) -> Client:
    """A client for the services at $CHARGPT_TRAINER_ADDRESS and $CHARGPT_INFERENCE_ADDRESS when both are set;
    otherwise both services are started in this kernel (launchers.local, as `chargpt demo` does) until it exits."""
    trainer, inference = os.environ.get(TRAINER_ADDRESS_ENV), os.environ.get(INFERENCE_ADDRESS_ENV)
    if not (trainer and inference):
        from launchers.local import LocalServices  # the server packages, only when starting them here

        services = _stack.enter_context(LocalServices(Path(data_dir), device))
        trainer, inference = services.trainer_address, services.inference_address
    return _stack.enter_context(Client(trainer, inference, ClientOptions.from_env(timeout=timeout)))


def stop_services() -> None:
    """Close the clients and stop services that connect() started (also done when the kernel exits)."""
    _stack.close()
