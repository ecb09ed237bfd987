"""bench.peers --smoke end to end: every peer's row (measured, or why not), greedy parity, issue 25's targets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.peer_report import LABELS

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = ("chargpt_grpc", "chargpt_http", "ctranslate2", "transformers")  # chargpt and the dev dependencies
SMOKE_CHARS, SMOKE_STREAMS, SMOKE_MANY, PARITY_CHARS = 31, ("1", "4"), "8", 24


def _smoke(*extra: str) -> dict[str, Any]:
    """bench.peers --smoke (and `extra`)'s results file, read and removed, with its printed report as "stdout"."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client")])}
    run = subprocess.run([sys.executable, "-m", "bench.peers", "--smoke", *extra], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    written = re.search(r"^wrote (.+\.json)$", run.stdout, re.MULTILINE)
    assert written, run.stdout[-3000:]
    path = Path(written.group(1))
    out: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    out["stdout"] = run.stdout
    return out


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return _smoke()


@pytest.mark.slow
def test_every_installed_peer_streams_every_character(report: dict[str, Any]) -> None:
    rows = report["rows"]
    assert list(rows) == list(LABELS)
    for name in INSTALLED:
        assert rows[name]["available"], rows[name].get("reason")
        assert rows[name]["in_process"] == (name in ("ctranslate2", "transformers"))
        expected = [*SMOKE_STREAMS, SMOKE_MANY] if name == "chargpt_grpc" else list(SMOKE_STREAMS)
        assert list(rows[name]["streams"]) == expected
        for level, figures in rows[name]["streams"].items():
            assert figures["short_streams"] == 0 and figures["tokens"] % (int(level) * SMOKE_CHARS) == 0, figures
            assert figures["tok_s"] > 0 and 0 < figures["ttft_p50_ms"] <= figures["ttft_p99_ms"]
            assert figures["server_cores"] > 0


@pytest.mark.slow
def test_llama_server_is_measured_or_a_row_saying_why(report: dict[str, Any]) -> None:
    llama = report["rows"]["llama_server"]
    if not llama["available"]:
        assert "Serving peers" in llama["reason"] or "could not start" in llama["reason"]
        assert f"llama-server: {llama['reason']}" in report["stdout"]
        assert all(t["status"].startswith("n/a") for t in report["targets"][:4])
        return
    assert list(llama["streams"]) == list(SMOKE_STREAMS)
    assert all(figures["short_streams"] == 0 for figures in llama["streams"].values())
    versus = report["rows"]["chargpt_http"]["streams"]["4"]["vs_llama_server"]
    assert versus["tok_s"] == pytest.approx(report["rows"]["chargpt_http"]["streams"]["4"]["tok_s"]
                                            / llama["streams"]["4"]["tok_s"])


@pytest.mark.slow
def test_parity_targets_and_header(report: dict[str, Any]) -> None:
    parity = report["parity"]
    measured = [name for name, row in report["rows"].items() if row["available"]]
    assert parity["reference"] == "chargpt_grpc" and list(parity["texts"]) == measured
    assert all(len(text) == PARITY_CHARS for text in parity["texts"].values())
    assert parity["first_difference"]["chargpt_http"] is None  # the same server through the other protocol
    assert [t["goal"] for t in report["targets"]] == [">= 1.0", "<= 1.0", ">= 1.5", "<= 0.5", "< 1.0"]
    assert report["targets"][4]["status"] in ("PASS", "MISS")
    assert report["gemm_gflops"]["float32"] > 0 and report["gemm_gflops"]["bfloat16"] > 0
    assert "GEMM peaks: fp32" in report["stdout"] and "greedy parity" in report["stdout"]


@pytest.mark.slow
def test_skipped_peers_are_rows_saying_so_and_chargpt_still_runs() -> None:
    skipped = ("llama_server", "ctranslate2", "transformers")
    rows = _smoke("--skip", *skipped)["rows"]
    assert all(not rows[name]["available"] and rows[name]["reason"] == "skipped (--skip)" for name in skipped)
    assert rows["chargpt_http"]["available"] and rows["chargpt_http"]["streams"]["4"]["short_streams"] == 0
    assert rows["chargpt_http"]["streams"]["4"]["tokens"] == 4 * SMOKE_CHARS
