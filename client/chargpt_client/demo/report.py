"""The demo's report folder: report.md (samples, perplexity table, figures) and summary.json."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

from chargpt_client import types as t
from chargpt_client.demo.context import Demo
from chargpt_client.demo.steps_model import PRESET_SETTINGS


def _fence(text: str) -> list[str]:
    return ["```text", text.replace("```", "'''"), "```", ""]


def _num(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _overview(demo: Demo) -> list[str]:
    f = demo.findings
    assert f.device and f.corpus and f.job and f.model
    d, m, job = f.device.device, f.job.model, f.job
    return [
        f"# chargpt demo: {demo.options.corpus_label}", "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC} in {f.seconds:.0f} s.", "",
        "| | |", "| --- | --- |",
        f"| device | {d.type} ({d.name}), {d.cpu_cores} CPU cores |",
        f"| corpus | {f.corpus.name}: {f.corpus.num_chars:,} chars, {f.corpus.train_chars:,} train / "
        f"{f.corpus.val_chars:,} validation |",
        f"| vocabulary | {len(f.corpus.vocabulary)} characters |",
        f"| model | {m.n_layer} layers, {m.n_head} heads, {m.n_embd} dims, context {m.block_size}, "
        f"{job.parameter_count:,} parameters |",
        f"| training | {job.step} steps in {f.training_seconds:.0f} s ({job.state.lower()}"
        f"{', stopped at the time cap' if f.stopped_early else ''}), best validation loss "
        f"{_num(job.best_val_loss)} |",
        f"| job | `{job.job_id}` |", "",
    ]


def _timelapse(demo: Demo) -> list[str]:
    lines = ["## Training: the timelapse", "", "![loss curves](loss.png)", ""]
    evals = demo.findings.evaluations
    if evals:
        lines += ["| step | train loss | validation loss |", "| ---: | ---: | ---: |"]
        lines += [f"| {e.step} | {_num(e.train_loss)} | {_num(e.val_loss)} |" for e in evals]
        lines.append("")
    for sample in demo.findings.samples:
        lines += [f"Sample at step {sample.step}:", "", *_fence(sample.text)]
    return lines


def _writing(demo: Demo) -> list[str]:
    lines = ["## Writing at the three presets", ""]
    for preset, result in demo.findings.generations.items():
        lines += [f"### {preset} ({PRESET_SETTINGS[preset]})", "", *_fence(result.text)]
    if demo.findings.continuation is not None:
        lines += [f"### Continuing {demo.findings.prompt!r} (balanced)", "",
                  *_fence(demo.findings.prompt + demo.findings.continuation.text)]
    if demo.findings.next_char:
        lines += ["### The next-character choice", "",
                  "At each step of a short balanced generation: the model's top-20 candidates (grey: raw "
                  "probabilities) and the same candidates after temperature, top-k and top-p, renormalised over them "
                  "(blue); the sampled character is red.", "", "![next-character distribution](next_char.png)", ""]
    return lines


def _perplexity(demo: Demo) -> list[str]:
    lines = ["## Generalization: perplexity on held-out text", "",
             "| held-out text | domain | scored chars | removed chars | perplexity | bits/char |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['corpus']} | {r['domain']} | {r['chars']} | {r['removed']} | {_num(r['perplexity'])} | "
              f"{_num(r['bits_per_char'])} |" for r in demo.findings.perplexity]
    lines.append("")
    lines += [f"- {note}" for note in demo.findings.filter_notes]
    return [*lines, "", "## Attention", "", "![attention heatmaps](attention.png)", ""]


def write_report(demo: Demo) -> Path:
    report_dir = demo.options.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    lines = _overview(demo) + _timelapse(demo) + _writing(demo) + _perplexity(demo)
    path = report_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    f = demo.findings
    summary = {"corpus": demo.options.corpus_label, "seconds": f.seconds, "training_seconds": f.training_seconds,
               "job": f.job, "model": f.model, "samples": f.samples, "roundtrip": f.roundtrip,
               "generations": f.generations, "prompt": f.prompt, "continuation": f.continuation,
               "next_char": f.next_char,
               "perplexity": f.perplexity, "filter_notes": f.filter_notes,
               "images": {k: str(v) for k, v in f.images.items()}}
    (report_dir / "summary.json").write_text(json.dumps(t.to_jsonable(summary), indent=2, ensure_ascii=False),
                                             encoding="utf-8")
    return path
