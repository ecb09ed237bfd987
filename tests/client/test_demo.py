"""`chargpt demo` in its fast mode: every step's output, and a report folder with decodable PNGs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from chargpt_client.demo import DemoOptions, run_demo

from tests.client.test_library_units import _png_size

ROOT = Path(__file__).resolve().parents[2]
STEP_TITLES = ["[1/8] The device", "[2/8] The corpus", "[3/8] The tokenizer", "[4/8] The architecture",
               "[5/8] Training", "[6/8] Writing", "[7/8] Generalization", "[8/8] Attention heatmaps"]


def _check_report(report: Path, in_domain: str) -> dict[str, object]:
    text = (report / "report.md").read_text()
    for heading in ("## Training: the timelapse", "## Writing at the three presets", "### balanced",
                    "## Generalization: perplexity on held-out text", "![attention heatmaps](attention.png)",
                    "### The next-character choice", "![next-character distribution](next_char.png)"):
        assert heading in text
    assert f"| {in_domain} | in |" in text
    for image in ("loss.png", "attention.png", "next_char.png"):
        width, height = _png_size(report / image)
        assert width > 200 and height > 200
    summary: dict[str, object] = json.loads((report / "summary.json").read_text())
    steps = summary["next_char"]
    assert isinstance(steps, list) and len(steps) == 8
    for step in steps:  # the filtered distribution sums to 1 and keeps the sampled character possible
        assert abs(sum(p for _, p in step["filtered"]) - 1) < 1e-6
        assert dict(step["filtered"])[step["chosen"]] > 0
    return summary


def test_demo_on_a_builtin_corpus_through_the_cli(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{ROOT}:{ROOT / 'client'}"}
    result = subprocess.run([sys.executable, "-m", "chargpt_client.cli", "demo", "--fast", "--steps", "12",
                             "--prompt", "ROMEO:"], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    positions = [out.index(title) for title in STEP_TITLES]
    assert positions == sorted(positions)
    for expected in ("Found: CPU", "Built-in corpus 'shakespeare'", "Split: the first 90% for training",
                     "Vocabulary size: 63", "round trip OK", "Parameters: ", "sample at step 0:",
                     "step 12/12", "--- focused", "--- balanced", "--- creative", "--- your prompt 'ROMEO:'",
                     "held-out text", "removed", "Wrote chargpt-report/next_char.png", "sampled ",
                     "Wrote chargpt-report/attention.png", "Report: chargpt-report"):
        assert expected in out, expected
    table = out[out.index("held-out text"):].splitlines()
    rows = [line.split() for line in table[2:5]]
    assert [r[:2] for r in rows] == [["shakespeare", "in"], ["python", "out"], ["startups", "out"]]
    assert all(float(r[4]) > 1 for r in rows)
    summary = _check_report(tmp_path / "chargpt-report", "shakespeare")
    assert set(summary["generations"]) == {"focused", "balanced", "creative"}  # type: ignore[arg-type]
    assert summary["roundtrip"][0] == summary["roundtrip"][2]  # type: ignore[index]
    assert (tmp_path / "chargpt-data" / "trainer").is_dir()


def test_demo_on_your_own_text(tmp_path: Path) -> None:
    text_file = tmp_path / "recipes.txt"
    text_file.write_text("Mix the flour with water; knead for ten minutes, then rest.\n" * 400)
    out = io.StringIO()
    demo = run_demo(DemoOptions(text_file=text_file, fast=True, steps=6, prompt="Mix → the", sample_chars=40,
                                heldout_chars=400, data_dir=tmp_path / "data", report_dir=tmp_path / "report"), out)
    transcript = out.getvalue()
    assert "Uploaded your text" in transcript and "dropped characters the model never saw" in transcript
    assert demo.findings.prompt == "Mix  the"
    perplexity = demo.findings.perplexity
    assert [(r["corpus"], r["domain"]) for r in perplexity][:1] == [("recipes", "in")]
    assert {r["domain"] for r in perplexity[1:]} == {"out"} and len(perplexity) >= 2
    assert any("outside the vocabulary" in note for note in demo.findings.filter_notes)
    _check_report(tmp_path / "report", "recipes")


def test_the_demo_trains_to_its_budget_through_the_trainer() -> None:
    """--minutes becomes TrainingSpec.max_seconds: the trainer calibrates and fits the schedule (tests of that are
    in tests/trainer_service/training/test_budget.py); --steps with --minutes sends both (the earlier wins)."""
    from chargpt_client import types as t
    from chargpt_client.demo.context import Demo
    from chargpt_client.demo.steps_train import _training_fields

    corpus = t.Corpus("id", "c", "", 0, 1_000_000, "ab", 900_000, 100_000, True, None)
    demo = Demo(options=DemoOptions(minutes=3.0), client=None, out=io.StringIO())  # type: ignore[arg-type]
    fields = _training_fields(demo, corpus)
    assert fields["max_seconds"] == 180.0 and "max_steps" not in fields and "eval_interval" not in fields
    both = _training_fields(Demo(options=DemoOptions(minutes=2.0, steps=400), client=None,  # type: ignore[arg-type]
                                 out=io.StringIO()), corpus)
    assert both["max_seconds"] == 120.0 and both["max_steps"] == 400 and both["eval_interval"] == 100


def test_the_client_library_does_not_import_the_services() -> None:
    """The client (demo included) reaches the services only through the API; launchers.local starts them."""
    import ast

    forbidden = ("trainer_service", "inference_service", "chargpt.core", "chargpt.server", "torch")
    for path in (ROOT / "client" / "chargpt_client").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.startswith(forbidden)]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
