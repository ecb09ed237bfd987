"""Terminal rendering shared by the CLI and the demo: aligned tables and the live training progress display."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from chargpt_client import types as t

BAR_WIDTH = 24
LOG_EVERY_S = 15.0  # off a terminal: a progress line every 10% of steps or this often


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO = sys.stdout) -> None:
    """A plain aligned table (text columns left-aligned, numbers right-aligned)."""
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    print(line(headers), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print(line(row), file=out)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return text == "-"
    return True


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if value is None:
        return "-"
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M:%S"))
    return str(value)


def duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def human_count(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{n:.0f}"
        n /= 1000
    return f"{n:.1f}T"


def progress_total(p: t.Progress) -> int | None:
    """The steps a progress bar counts to: the run's end (a budget's estimate), never below the steps done; None
    while a budget-only job has no estimate yet."""
    return None if p.max_steps is None else max(p.step, p.max_steps)


class JobProgress:
    """Renders job events; on a terminal the bar redraws in place, elsewhere it prints a line now and then."""

    def __init__(self, out: TextIO = sys.stderr, sample_width: int = 100, indent: str = "  ") -> None:
        self.out = out
        self.tty = out.isatty()
        self.sample_width = sample_width
        self.indent = indent
        self._bar_shown = False
        self._last_logged_tenth = -1
        self._last_logged_at = time.monotonic()
        self.samples: list[t.Sample] = []
        self.evaluations: list[t.Evaluation] = []
        self.final_state = ""
        self.final_message = ""

    def handle(self, event: t.JobEvent) -> None:
        if isinstance(event, t.Progress):
            self._progress(event)
        elif isinstance(event, t.Evaluation):
            self.evaluations.append(event)
            best = "  (new best)" if event.is_best else ""
            self._line(f"step {event.step}: train loss {event.train_loss:.4f}, val loss {event.val_loss:.4f}{best}")
        elif isinstance(event, t.Sample):
            self.samples.append(event)
            self._line(f"sample at step {event.step}:")
            self._block(event.text)
        elif isinstance(event, t.StateChanged):
            self.final_state, self.final_message = event.state, event.message
            note = f" ({event.message})" if event.message else ""
            self._line(f"job {event.job_id[:12]} {event.state.lower()}{note}")
        # CheckpointWritten is not shown: checkpoints are frequent and the evaluation line says "new best".

    def bar(self, p: t.Progress) -> str:
        total = progress_total(p)
        fraction = min(1.0, p.step / total) if total else 0.0
        filled = int(fraction * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        steps = f"{p.step}/{total}" if total else str(p.step)
        return (f"[{bar}] {100 * fraction:3.0f}% step {steps}  loss {p.loss:.4f}  "
                f"{human_count(p.tokens_per_second)} tok/s  elapsed {duration(p.elapsed_seconds)}  "
                f"ETA {duration(p.eta_seconds)}")

    def _progress(self, p: t.Progress) -> None:
        if self.tty:
            self.out.write("\r\033[K" + self.bar(p))
            self.out.flush()
            self._bar_shown = True
            return
        total = progress_total(p)
        tenth = int(10 * p.step / total) if total else 0
        now = time.monotonic()
        if tenth > self._last_logged_tenth or now - self._last_logged_at >= LOG_EVERY_S:
            self._last_logged_tenth, self._last_logged_at = tenth, now
            self._line(self.bar(p))

    def _line(self, text: str) -> None:
        if self._bar_shown:
            self.out.write("\r\033[K")
            self._bar_shown = False
        self.out.write(text + "\n")
        self.out.flush()

    def _block(self, text: str) -> None:
        """A sample, indented, at most 12 lines of at most sample_width characters."""
        for line in (text.splitlines() or [""])[:12]:
            shown = line if len(line) <= self.sample_width else line[:self.sample_width - 1] + "…"
            self._line(f"{self.indent}| {shown}")

    def close(self) -> None:
        if self._bar_shown:
            self.out.write("\n")
            self.out.flush()
            self._bar_shown = False
